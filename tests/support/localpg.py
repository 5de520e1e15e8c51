"""A throwaway PostgreSQL server on 127.0.0.1, for the tests and benchmarks that need a real one.

Uses the server binaries of the machine's ``postgresql`` package; as root it runs the server as
the ``postgres`` user, since initdb refuses root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """A service the tests start (PostgreSQL, moto) cannot run on this machine."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise ServiceUnavailable(f"PostgreSQL's {name} is missing: install the postgresql package")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[Callable[[], str]]:
    """Start a server in a temporary folder; yields a function that creates a fresh database and
    returns its URL. Everything is removed on exit."""
    from sqlalchemy import create_engine, text

    folder = Path(tempfile.mkdtemp(prefix="workbench-pg-"))  # the server user must be able to enter it
    data = folder / "data"
    as_server: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_server = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=100"
    try:
        subprocess.run(
            [*as_server, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*as_server, _binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        admin = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT")
        made = iter(range(1_000_000))

        def new_database() -> str:
            name = f"wb_{next(made)}"
            with admin.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

        yield new_database
        admin.dispose()
    finally:
        subprocess.run([*as_server, _binary("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
