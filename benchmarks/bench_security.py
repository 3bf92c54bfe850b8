"""Security costs beside their raw baselines, measured in the same run on the same machine.

``python -m benchmarks.bench_security [--quick]`` prints a table and writes
``benchmarks/results/bench_security.json``; ``run(quick)`` returns the rows.

- ``verify_plugin 50 files x 4 KiB``: the full verification of a signed manifest
  listing 50 files of 4 KiB in 5 directories (size cap, strict envelope,
  signature, strict manifest parse, scope, expiry, rollback check on
  MemoryStorage, directory walk without following links, each file read once
  and hashed, the bytes handed back). Baseline: the raw work that produces the
  same result, with ``cryptography`` and ``hashlib`` directly -- one Ed25519
  verify of the same signed bytes, then each of the same 50 files read into
  memory and hashed, the bytes kept (verification must hand them over: the
  plugin host loads code from them). Target: at most 1.2x.
- ``... vs bytes dropped``: the same figure beside a baseline that drops each
  file's bytes once hashed. Keeping 50 buffers alive costs fresh memory (page
  faults) that streaming reuses; this row shows that price. No target.
- ``raw compute only``: the Ed25519 verify and SHA-256 over bytes already in
  memory (no file reads at all), beside the kept-bytes baseline. No target.
- ``verify_plugin 50 files x 16 KiB``: the same with larger files, beside its
  kept-bytes baseline. No target.
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

import asyncio
import functools
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks import _timing
from benchmarks._timing import make_row, median_spread
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

NOW = 1_800_000_000
FILES = 50
FILE_BYTES = 4096


_row = functools.partial(make_row, "security", digits=3)


def _make_plugin(root: Path, file_bytes: int = FILE_BYTES) -> tuple[bytes, TrustStore]:
    rng = __import__("random").Random(7)
    for i in range(FILES):
        sub = root / f"pkg{i % 5}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i}.py").write_bytes(rng.randbytes(file_bytes))
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


async def _bench_verify(
    quick: bool, root: Path, file_bytes: int = FILE_BYTES
) -> list[dict[str, Any]]:
    envelope, trust = _make_plugin(root, file_bytes)
    storage = MemoryStorage()
    guard = RollbackGuard(storage)
    parsed = parse_envelope(envelope, max_bytes=1 << 20)
    signed = pae(parsed.payload_type, parsed.payload)
    signature = parsed.signatures[0].sig
    raw_key = Ed25519PublicKey.from_public_bytes(next(iter(trust.keys.values())).public_key.raw)
    paths = sorted(str(p) for p in root.rglob("*.py"))
    contents = [Path(p).read_bytes() for p in paths]

    def raw_kept() -> list[bytes]:
        # What verification must produce: the bytes in memory, each hashed.
        raw_key.verify(signature, signed)
        kept = []
        for path in paths:
            with open(path, "rb") as handle:
                data = handle.read()
            hashlib.sha256(data).hexdigest()
            kept.append(data)
        return kept

    def raw_streamed() -> None:
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
        raw_kept()
        raw_streamed()
        raw_in_memory()
    samples: dict[str, list[float]] = {"ours": [], "kept": [], "streamed": [], "compute": []}
    clock = time.perf_counter
    for _ in range(calls):
        # One call of each in turn, so that a burst of machine noise hits all alike.
        t0 = clock()
        await ours()
        t1 = clock()
        raw_kept()
        t2 = clock()
        raw_streamed()
        t3 = clock()
        raw_in_memory()
        t4 = clock()
        samples["ours"].append(t1 - t0)
        samples["kept"].append(t2 - t1)
        samples["streamed"].append(t3 - t2)
        samples["compute"].append(t4 - t3)

    def chunked(values: list[float]) -> list[float]:
        size = len(values) // chunks
        return [statistics.median(values[i : i + size]) for i in range(0, size * chunks, size)]

    m, m_spread = median_spread(chunked(samples["ours"]))
    k, k_spread = median_spread(chunked(samples["kept"]))
    s, s_spread = median_spread(chunked(samples["streamed"]))
    c, c_spread = median_spread(chunked(samples["compute"]))
    name = f"verify_plugin {FILES} files x {file_bytes // 1024} KiB"
    main = file_bytes == FILE_BYTES
    rows = [
        _row(
            name,
            m * 1e6,
            "us",
            k * 1e6,
            "us raw verify + read + sha256, bytes kept",
            ratio=m / k,
            target="<= 1.2x raw" if main else "- (information)",
            holds=(m / k <= 1.2) if main else None,
            spread=max(m_spread, k_spread),
        )
    ]
    if main:
        rows += [
            _row(
                f"{name} vs bytes dropped",
                m * 1e6,
                "us",
                s * 1e6,
                "us raw verify + read + sha256, bytes dropped",
                ratio=m / s,
                target="- (information)",
                spread=max(m_spread, s_spread),
            ),
            _row(
                "raw compute only (no file reads)",
                c * 1e6,
                "us",
                k * 1e6,
                "us raw verify + read + sha256, bytes kept",
                ratio=c / k,
                target="- (information)",
                spread=c_spread,
            ),
        ]
    return rows


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
    v, v_spread = median_spread(verify_times)
    r, _ = median_spread(raw_times)
    return [
        _row(
            "audit append",
            append_rate,
            "entries/s",
            raw_append_rate,
            "entries/s raw storage append",
            ratio=append_rate / raw_append_rate,
            target="- (information)",
            spread=0.0,
        ),
        _row(
            f"audit verify ({count} entries)",
            count / v,
            "entries/s",
            count / r,
            "entries/s raw sha256 + json.loads",
            ratio=r / v,
            target="- (information)",
            spread=v_spread,
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure every figure; each row carries its baseline from this same run."""

    async def bench(directory: Path) -> list[dict[str, Any]]:
        rows = await _bench_verify(quick, directory / "plugin")
        rows += await _bench_verify(quick, directory / "plugin16", 4 * FILE_BYTES)
        rows += await _bench_audit(quick)
        return rows

    with tempfile.TemporaryDirectory(prefix="taskloom-bench-security-") as directory:
        return asyncio.run(bench(Path(directory)))


def main(argv: list[str] | None = None) -> int:
    """Print the table and write ``benchmarks/results/bench_security.json``."""
    return _timing.main("bench_security", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
