"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary
directory, owned by the ``postgres`` user when running as root, on a free port,
listening on 127.0.0.1 only; password authentication over TCP.

``python tests/pg_cluster.py start DIR`` prints the DSN and leaves the
server running; ``... stop DIR`` stops it (``.ci/run`` does the same in shell).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PASSWORD = "tl-test-pw-3f9c"
"""The superuser's password in throwaway clusters (tests check it never leaks)."""


def find_bin(name: str) -> str | None:
    """Path of a PostgreSQL server binary (initdb, pg_ctl): PATH, then Debian's layout."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def available() -> bool:
    """Whether initdb and pg_ctl exist here (and, as root, the postgres user or useradd)."""
    if find_bin("initdb") is None or find_bin("pg_ctl") is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return shutil.which("useradd") is not None
    return True


def ensure_user() -> None:
    """As root, make sure the ``postgres`` system user exists: the server refuses root."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--home-dir",
                "/var/lib/postgresql",
                "--shell",
                "/bin/sh",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(argv)]


def start(
    directory: Path, *, listen: tuple[str, ...] = ("127.0.0.1",), allow: tuple[str, ...] = ()
) -> str:
    """Create and start a cluster under ``directory``; return its DSN (on ``listen[0]``).

    ``listen``: the addresses the server listens on (127.0.0.1 only by default);
    ``allow``: further client networks (CIDR) allowed to log in with the password.
    """
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("initdb/pg_ctl not found: install PostgreSQL's server package")
    ensure_user()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data"
    pwfile = directory / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    port = free_port()
    subprocess.run(
        _as_owner(
            [
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    if allow:
        with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:
            for network in allow:
                hba.write(f"host all all {network} scram-sha-256\n")
    # In the cluster's own configuration, so that ``restart`` brings back the same server.
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = '{','.join(listen)}'\n"
            f"unix_socket_directories = '{directory}'\nmax_connections = 200\n"
            "fsync = on\nsynchronous_commit = on\n"
        )
    restart(directory)
    return f"postgresql://postgres:{PASSWORD}@{listen[0]}:{port}/postgres"


def restart(directory: Path) -> None:
    """Start the cluster under ``directory`` (again, after ``stop``: same port and data)."""
    pg_ctl = find_bin("pg_ctl")
    if pg_ctl is None:
        raise RuntimeError("pg_ctl not found: install PostgreSQL's server package")
    subprocess.run(
        _as_owner(
            [pg_ctl, "-D", str(directory / "data"), "-l", str(directory / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )


def stop(directory: Path) -> None:
    """Stop the cluster under ``directory`` (fast shutdown); quiet if it is not running."""
    pg_ctl = find_bin("pg_ctl")
    if pg_ctl is None:
        return
    subprocess.run(
        _as_owner([pg_ctl, "-D", str(directory / "data"), "-m", "fast", "-w", "stop"]),
        check=False,
        capture_output=True,
    )


if __name__ == "__main__":
    verb, where = sys.argv[1], Path(sys.argv[2])
    if verb == "start":
        print(start(where))
    else:
        stop(where)
