"""Several hosts, one PostgreSQL: three ``taskloom worker`` processes, each in its own network
namespace (``ip netns`` + a veth pair; the server listens on the host side's addresses),
run 300 submitted map runs while one host's worker is SIGKILLed and another host's link
is cut (``ip link set ... down``) for longer than the lease.

Every run must end succeeded with the right output; the cut-off host, once back, must find
its writes refused (its runs were taken over: fencing); no item may run on two live hosts
at once. Without root or network namespaces the same test runs with the worker processes
on loopback and freezes the "cut" host with SIGSTOP instead, and says so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pg_cluster
import psycopg
import pytest
from engine_support import FakeExecutor

from taskloom.adapters.postgres import PostgresStorage
from taskloom.sdk import Engine, ExecutorRegistry
from taskloom.sdk._runs.codec import decode
from taskloom.sdk._runs.records import NS_RUNS, RunRecord

WORKER = Path(__file__).resolve().parent / "pg_host_worker.py"
HOSTS = 3
RUNS = 300
ITEMS = 3
LEASE_S = 2.0
CUT_S = 6.0
"""How long the cut host stays cut off: three times the lease."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def namespaces_available() -> bool:
    """Whether this process may create network namespaces and veth pairs (root, ``ip``);
    ``TASKLOOM_TEST_NO_NETNS=1`` forces the loopback variant."""
    if os.environ.get("TASKLOOM_TEST_NO_NETNS") or os.geteuid() != 0 or not shutil.which("ip"):
        return False
    probe = f"tlprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError):
        return False
    _ip("netns", "del", probe)
    return True


class Network:
    """Three hosts: namespace ``tl<tag>h<i>`` whose veth end has 10.213.<i>.2, host side .1."""

    def __init__(self, isolated: bool) -> None:
        self.isolated = isolated
        self.tag = uuid.uuid4().hex[:5]
        self.made: list[str] = []
        self.frozen = (0.0, 0.0)
        """Loopback variant: when the "cut" host was stopped and continued."""

    def server_addresses(self) -> tuple[str, ...]:
        if not self.isolated:
            return ("127.0.0.1",)
        return tuple(f"10.213.{i}.1" for i in range(1, HOSTS + 1))

    def host_address(self, i: int) -> str:
        """The address host ``i``'s connections come from (namespaces only)."""
        return f"10.213.{i}.2"

    def host_link(self, i: int) -> str:
        return f"tl{self.tag}a{i}"

    def setup(self) -> None:
        if not self.isolated:
            return
        for i in range(1, HOSTS + 1):
            ns, outer, inner = f"tl{self.tag}h{i}", self.host_link(i), f"tl{self.tag}b{i}"
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("addr", "add", f"10.213.{i}.1/24", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"10.213.{i}.2/24", "dev", inner)
            _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", f"tl{self.tag}h{i}"] if self.isolated else []

    def dsn_for(self, dsn: str, i: int) -> str:
        if not self.isolated:
            return dsn
        return dsn.replace("@10.213.1.1:", f"@10.213.{i}.1:")

    def teardown(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for i in range(1, HOSTS + 1):
            subprocess.run(
                ["ip", "link", "del", self.host_link(i)], check=False, capture_output=True
            )


def _pipeline() -> dict[str, Any]:
    return {
        "taskloom": "pipeline/v1",
        "name": "hosts",
        "inputs": {"items": {"type": "array"}},
        "defaults": {"executor": "echo"},
        "steps": [
            {"id": "m", "map": "{{inputs.items}}", "step": {"id": "b", "prompt": "{{item}}"}}
        ],
        "output": "{{steps.m.output}}",
    }


def _intervals(
    log: Path, ends: dict[str, float], frozen: tuple[str, float, float] | None
) -> dict[str, list[tuple[float, float, str]]]:
    """Per prompt: (start, end, holder) of every call; a call cut short by a kill ends at
    the kill (``ends``: holder -> when its process died). ``frozen`` (loopback variant:
    host, SIGSTOP, SIGCONT): a call that host had in flight when it was stopped did its
    work before the stop; it merely returns after SIGCONT (a paused process is the case
    leases cannot stop: what the fence stops is its next write and its next call)."""
    # One host may run a call of an item twice (its own expired lease recovered while the
    # first attempt still ran): pair each end with that host's earliest open start.
    opened: dict[tuple[str, str], list[float]] = defaultdict(list)
    spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        key = (entry["holder"], entry["p"])
        if entry["what"] == "start":
            opened[key].append(entry["at"])
        else:
            spans[entry["p"]].append((opened[key].pop(0), entry["at"], entry["holder"]))
    for (holder, prompt), starts in opened.items():
        for start in starts:
            spans[prompt].append((start, ends.get(holder, float("inf")), holder))
    if frozen is not None:
        host, stop, resume = frozen
        for calls in spans.values():
            calls[:] = [
                (s, stop if h == host and s < stop and e > resume else e, h) for s, e, h in calls
            ]
    return spans


@pytest.mark.slow
def test_three_hosts_share_one_postgres_through_a_kill_and_a_cut_link(tmp_path: Path) -> None:
    """300 map runs on three worker hosts, one SIGKILLed and one cut off past its lease:
    all succeed with the right output, the cut host's writes are fenced, and no item runs
    on two live hosts at once."""
    if not pg_cluster.available():
        pytest.skip("PostgreSQL's server binaries are not installed")
    isolated = namespaces_available()
    if not isolated:
        print("network namespaces unavailable: worker processes on loopback, SIGSTOP as the cut")
    network = Network(isolated)
    cluster = Path(tempfile.mkdtemp(prefix="taskloom-hosts-pg-"))
    workers: list[subprocess.Popen[str]] = []
    try:
        network.setup()
        dsn = pg_cluster.start(cluster, listen=network.server_addresses(), allow=("10.213.0.0/16",))
        schema = "hosts_" + network.tag
        log = tmp_path / "calls.log"
        expected = asyncio.run(_submit(dsn, schema))
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "from pg_host_worker import register_from_env\n\nregister_from_env()\n"
        )
        for i in range(1, HOSTS + 1):
            home = tmp_path / f"host{i}"
            home.mkdir()
            (home / "taskloom.toml").write_text(
                f'[storage]\nkind = "postgres"\nschema = "{schema}"\nconnect_timeout_s = 10\n'
                f"pool_timeout_s = 10\n[engine]\nlease_ttl_s = {LEASE_S}\n"
                '[executors.echo]\ntype = "hostlog"\nlatency = 0.2\n'
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_")}
            env.update(
                PYTHONPATH=os.pathsep.join([str(site), str(WORKER.parent), *sys.path]),
                HOME=str(home),
                TASKLOOM_HOME=str(home / ".taskloom"),
                TASKLOOM_POSTGRES_DSN=network.dsn_for(dsn, i),
                TL_HOSTS_LOG=str(log),
                TL_HOST=f"host{i}",
            )
            command = [
                *network.prefix(i),
                sys.executable,
                "-m",
                "taskloom.sdk._cli.main",
                "worker",
                "--concurrency",
                "6",
                "--grace",
                "2",
                "--json",
            ]
            workers.append(
                subprocess.Popen(command, cwd=home, env=env, stdout=subprocess.PIPE, text=True)
            )
        ends = asyncio.run(_progress(dsn, schema, expected, workers, network))
        assert ends, "the SIGKILL happened"
        for i in (2, 3):  # every host still alive stops cleanly
            workers[i - 1].send_signal(signal.SIGTERM)
        stats = {}
        for i in (2, 3):
            out, _ = workers[i - 1].communicate(timeout=60)
            assert workers[i - 1].returncode == 0, out
            stats[i] = json.loads(out)
        assert all(s["claimed"] >= 1 for s in stats.values()), stats
        assert '"holder": "host1"' in log.read_text(), "host 1 ran calls before it was killed"
        assert stats[2]["lost"] >= 1, f"the cut host kept runs it had lost: {stats}"
        assert stats[3]["recovered"] + stats[2]["recovered"] >= 1
        frozen = None if network.isolated else ("host2", *network.frozen)
        spans = _intervals(log, ends, frozen)
        for prompt, calls in spans.items():
            calls.sort()
            for (_s1, e1, h1), (s2, _e2, h2) in itertools.pairwise(calls):
                assert h1 == h2 or s2 >= e1, (
                    f"{prompt} ran on {h1} and {h2} at once: {calls} {frozen}"
                )
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        pg_cluster.stop(cluster)
        shutil.rmtree(cluster, ignore_errors=True)
        network.teardown()


async def _submit(dsn: str, schema: str) -> dict[str, list[str]]:
    """Queue the runs; their expected outputs by run id."""
    registry = ExecutorRegistry()
    registry.register("echo", FakeExecutor())  # submitting validates: the id must exist
    async with Engine(storage=PostgresStorage(dsn, schema=schema), registry=registry) as engine:
        expected = {}
        for n in range(RUNS):
            items = [f"r{n}i{k}" for k in range(ITEMS)]
            run_id = await engine.submit(_pipeline(), {"items": items})
            expected[run_id] = [f"done:{item}" for item in items]
        return expected


async def _progress(
    dsn: str,
    schema: str,
    expected: dict[str, list[str]],
    workers: list[subprocess.Popen[str]],
    network: Network,
) -> dict[str, float]:
    """Kill host 1 a third of the way, cut host 2 off at half way for CUT_S, then wait for
    every run to succeed; return when each killed holder died."""
    ends: dict[str, float] = {}
    cut_done = False
    back = 0.0  # when the cut host's link came back up
    async with PostgresStorage(dsn, schema=schema) as storage:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            rows = await storage.scan(NS_RUNS)
            records = {r.key: decode(r.value, RunRecord, where=r.key) for r in rows}
            finished = sum(1 for r in records.values() if r.status == "succeeded")
            if not ends and finished >= RUNS // 3:
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                ends["host1"] = time.time()
            if ends and not cut_done and finished >= RUNS // 2:
                await _cut(network, workers[1])
                cut_done = True
                back = time.time()
            if finished == RUNS:
                for run_id, outputs in expected.items():
                    assert records[run_id].output == outputs, (run_id, records[run_id].output)
                if cut_done and network.isolated:
                    # the others may finish every run while host 2 still waits for its
                    # connections to time out: it must be back before it is asked to stop
                    await _reconnected(dsn, network.host_address(2), back)
                return ends
            await asyncio.sleep(0.25)
        stuck = [k for k, r in records.items() if r.status != "succeeded"]
        details = []
        for run_id in stuck[:5]:
            lease = await storage.get("leases", run_id)
            queued = [r.key for r in await storage.scan("queue") if run_id in r.key]
            details.append(
                f"{run_id}: {records[run_id].status}, lease "
                f"{lease.value.decode() if lease else None}, queued {queued}, now {time.time()}"
            )
    raise AssertionError(f"only {finished} of {RUNS} runs succeeded in time: {details}")


async def _reconnected(dsn: str, client: str, since: float) -> None:
    """Wait until the host at ``client`` has a connection to the server opened after
    ``since`` (its link came back up): a host stopped while it still waits for its old
    connections to time out cannot write what it queued, and exits 1 saying so."""
    deadline = time.monotonic() + 60
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE client_addr = %s::inet AND backend_start > to_timestamp(%s)",
                (client, since),
            )
            row = await cur.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the cut host ({client}) did not reconnect within 60 s of its link")


async def _cut(network: Network, worker: subprocess.Popen[str]) -> None:
    """Cut host 2 off for CUT_S seconds (its link down; on loopback: frozen by SIGSTOP)."""
    if network.isolated:
        _ip("link", "set", network.host_link(2), "down")
        await asyncio.sleep(CUT_S)
        _ip("link", "set", network.host_link(2), "up")
    else:
        stop = time.time()
        worker.send_signal(signal.SIGSTOP)
        await asyncio.sleep(CUT_S)
        network.frozen = (stop, time.time())  # before SIGCONT: it may log at once
        worker.send_signal(signal.SIGCONT)
