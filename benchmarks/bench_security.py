"""Security costs beside their raw baselines, measured in the same run on the same machine.

``python -m benchmarks.bench_security [--quick]`` prints a table and writes
``benchmarks/results/bench_security.json``; ``run(quick)`` returns the rows.

- ``verify_plugin 50 files``: the full verification of a signed manifest listing
  50 files of 4 KiB (size cap, strict envelope, signature, strict manifest parse,
  scope, expiry, rollback check on MemoryStorage, directory walk without following
  links, each file read once and hashed). Baseline: the raw work it cannot avoid,
  done with ``cryptography`` and ``hashlib`` directly -- one Ed25519 verify of the
  same signed bytes, plus reading each of the same 50 files and SHA-256 over its
  bytes. Target: at most 1.2x.
- ``raw compute only``: the same Ed25519 verify and SHA-256 over bytes already in
  memory (no file reads), beside the baseline above: shows how much of the raw
  cost is the filesystem. No target.
- ``audit append``: entries per second appended through ``AuditLog`` (canonical
  JSON, SHA-256, head record and entry in one atomic commit) on MemoryStorage,
  beside raw ``MemoryStorage.append`` of the same bytes. No target.
- ``audit verify``: entries per second checked by ``AuditLog.verify`` beside raw
  SHA-256 plus ``json.loads`` of the same entries. No target.

Verification figures are medians of single calls, the three alternating call
by call after a warm-up; ``spread`` is (max - min) / median of the medians of
10 (quick) or 20 consecutive chunks. Audit figures are whole-run rates.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import Capabilities
from taskloom.security import (
    AuditLog,
    RollbackGuard,
    TrustStore,
    build_manifest,
    generate_key,
    pae,
    parse_envelope,
    sign_manifest,
    verify_plugin,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_security.json"
NOW = 1_800_000_000
FILES = 50
FILE_BYTES = 4096


def _median_spread(samples: list[float]) -> tuple[float, float]:
    median = statistics.median(samples)
    spread = (max(samples) - min(samples)) / median if median else 0.0
    return median, spread


def _row(
    name: str,
    value: float,
    unit: str,
    baseline: float,
    baseline_unit: str,
    ratio: float,
    target: str,
    holds: bool | None,
    spread: float,
) -> dict[str, Any]:
    return {
        "group": "security",
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "baseline_unit": baseline_unit,
        "ratio": round(ratio, 3),
        "target": target,
        "holds": holds,
        "spread": round(spread, 3),
    }


def _make_plugin(root: Path) -> tuple[bytes, TrustStore]:
    rng = __import__("random").Random(7)
    for i in range(FILES):
        sub = root / f"pkg{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i}.py").write_bytes(rng.randbytes(FILE_BYTES))
    manifest = build_manifest(
        root,
        name="bench",
        version=1,
        entry_point="pkg0.mod0:setup",
        publisher="bench",
        capabilities=Capabilities(network_hosts=("api.example.com",)),
        issued_at=NOW - 10,
        expires_at=NOW + 3600,
        min_sdk_version="0.1.0",
    )
    key = generate_key()
    trust = TrustStore()
    trust.add_key(key.public_key, plugins=["bench"])
    return sign_manifest(manifest, [key]), trust


async def _bench_verify(quick: bool, root: Path) -> list[dict[str, Any]]:
    envelope, trust = _make_plugin(root)
    storage = MemoryStorage()
    guard = RollbackGuard(storage)
    parsed = parse_envelope(envelope, max_bytes=1 << 20)
    signed = pae(parsed.payload_type, parsed.payload)
    signature = parsed.signatures[0].sig
    raw_key = Ed25519PublicKey.from_public_bytes(next(iter(trust.keys.values())).public_key.raw)
    paths = sorted(str(p) for p in root.rglob("*.py"))
    contents = [Path(p).read_bytes() for p in paths]

    def raw_with_reads() -> None:
        raw_key.verify(signature, signed)
        for path in paths:
            with open(path, "rb") as handle:
                hashlib.sha256(handle.read()).hexdigest()

    def raw_in_memory() -> None:
        raw_key.verify(signature, signed)
        for data in contents:
            hashlib.sha256(data).hexdigest()

    async def ours() -> None:
        await verify_plugin(root, envelope, trust, rollback=guard, now=NOW)

    calls, chunks = (300, 10) if quick else (2000, 20)
    for _ in range(50):  # warm-up: page cache, code paths, the rollback record
        await ours()
        raw_with_reads()
        raw_in_memory()
    mine: list[float] = []
    base: list[float] = []
    compute: list[float] = []
    clock = time.perf_counter
    for _ in range(calls):
        # One call of each in turn, so that a burst of machine noise hits all alike.
        start = clock()
        await ours()
        middle = clock()
        raw_with_reads()
        end = clock()
        raw_in_memory()
        compute.append(clock() - end)
        mine.append(middle - start)
        base.append(end - middle)

    def chunked(samples: list[float]) -> list[float]:
        size = len(samples) // chunks
        return [statistics.median(samples[i : i + size]) for i in range(0, size * chunks, size)]

    m, m_spread = _median_spread(chunked(mine))
    b, b_spread = _median_spread(chunked(base))
    c, c_spread = _median_spread(chunked(compute))
    ratio = m / b
    return [
        _row(
            f"verify_plugin {FILES} files x {FILE_BYTES // 1024} KiB",
            m * 1e6,
            "us",
            b * 1e6,
            "us raw verify + read + sha256",
            ratio,
            "<= 1.2x raw",
            ratio <= 1.2,
            max(m_spread, b_spread),
        ),
        _row(
            "raw compute only (no file reads)",
            c * 1e6,
            "us",
            b * 1e6,
            "us raw verify + read + sha256",
            c / b,
            "- (information)",
            None,
            c_spread,
        ),
    ]


async def _bench_audit(quick: bool) -> list[dict[str, Any]]:
    count = 2000 if quick else 10000
    details = {"plugin": "bench", "version": 3, "signers": ["a" * 64]}
    storage = MemoryStorage()
    log = AuditLog(storage, stream="bench")
    start = time.perf_counter()
    for i in range(count):
        await log.append(actor="bench", action="plugin.load", subject=f"p{i}", details=details)
    append_rate = count / (time.perf_counter() - start)

    payloads = [e.payload for e in await storage.read("bench")]
    raw_storage = MemoryStorage()
    start = time.perf_counter()
    for payload in payloads:
        await raw_storage.append("raw", payload)
    raw_append_rate = count / (time.perf_counter() - start)

    repeats = 5 if quick else 9
    verify_times, raw_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        report = await log.verify()
        verify_times.append(time.perf_counter() - start)
        assert report.ok, report
        start = time.perf_counter()
        for payload in payloads:
            hashlib.sha256(payload).hexdigest()
            json.loads(payload)
        raw_times.append(time.perf_counter() - start)
    v, v_spread = _median_spread(verify_times)
    r, _ = _median_spread(raw_times)
    return [
        _row(
            "audit append",
            append_rate,
            "entries/s",
            raw_append_rate,
            "entries/s raw storage append",
            append_rate / raw_append_rate,
            "- (information)",
            None,
            0.0,
        ),
        _row(
            f"audit verify ({count} entries)",
            count / v,
            "entries/s",
            count / r,
            "entries/s raw sha256 + json.loads",
            r / v,
            "- (information)",
            None,
            v_spread,
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""

    async def bench(directory: Path) -> list[dict[str, Any]]:
        rows = await _bench_verify(quick, directory / "plugin")
        rows += await _bench_audit(quick)
        return rows

    with tempfile.TemporaryDirectory(prefix="taskloom-bench-security-") as directory:
        return asyncio.run(bench(Path(directory)))


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'figure':38} {'value':>12} {'unit':10} {'baseline':>12} {'baseline unit':32} "
        f"{'ratio':>7}  {'target':16} holds  spread"
    )
    for r in rows:
        holds = "-" if r["holds"] is None else ("yes" if r["holds"] else "NO")
        print(
            f"{r['name']:38} {r['value']:>12.1f} {r['unit']:10} {r['baseline']:>12.1f} "
            f"{r['baseline_unit']:32} {r['ratio']:>7.3f}  {r['target']:16} {holds:5}  "
            f"{r['spread']:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run (under a minute)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.quick)
    _print(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
