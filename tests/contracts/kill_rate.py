"""How many of the kept broken adapters the conformance suites catch: the README's kill rate.

Run from the repository root, with the suites to measure first on the path::

    PYTHONPATH=contracts:adapters:security:sdk python tests/contracts/kill_rate.py

Each broken adapter runs against its whole suite (state machines included) in a
process of its own, so that a suite that hangs on one is reported as "hung" after
``LIMIT_S`` instead of stopping the count. Put an older ``contracts`` tree first on
``PYTHONPATH`` to measure the suites as they were. This is a tool, not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT_S = 120.0
"""How long one broken adapter's run may take before it counts as hung."""

_ONE = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import broken_adapters as b
kind, name = sys.argv[1], sys.argv[2]
if kind == "storage":
    suite = b.storage_suite(b.BROKEN_STORAGE[name][0])
elif kind == "secrets":
    suite = b.secrets_suite(b.BROKEN_SECRETS[name][0])
elif kind == "executors":
    suite = b.executor_suite(b.BROKEN_EXECUTORS[name][0])
else:
    cls, factory, _ = b.BROKEN_DURABLE_STORAGE[name]
    suite = b.file_storage_suite(cls, factory)
outcomes = b.run_tests(suite, Path(tempfile.mkdtemp()))
print(json.dumps(sorted(n for n, e in outcomes.items() if e is not None)))
"""


def _jobs() -> list[tuple[str, str]]:
    sys.path.insert(0, str(HERE))
    import broken_adapters as b

    return (
        [("storage", n) for n in b.BROKEN_STORAGE]
        + [("secrets", n) for n in b.BROKEN_SECRETS]
        + [("executors", n) for n in b.BROKEN_EXECUTORS]
        + [("durable", n) for n in b.BROKEN_DURABLE_STORAGE]
    )


def _verdict(job: tuple[str, str]) -> str:
    """'caught' if some test of the suite failed, 'missed' if none did, 'hung' past LIMIT_S."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _ONE, *job, str(HERE)],
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "hung"
    if done.returncode != 0:
        return f"error: {done.stderr.strip().splitlines()[-1:]}"
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    return "caught" if failed else "missed"


def main() -> None:
    jobs = _jobs()
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(_verdict, jobs))
    for job, verdict in zip(jobs, verdicts, strict=True):
        if verdict != "caught":
            print(f"{verdict:8} {job[0]}: {job[1]}")
    counts = Counter(verdicts)
    print(f"{counts['caught']} of {len(jobs)} caught; {dict(counts)}")


if __name__ == "__main__":
    main()
