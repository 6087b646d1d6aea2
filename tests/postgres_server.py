"""Run a real PostgreSQL for tests: a temp directory, a free 127.0.0.1 port, removed at the end.

with PostgresServer() as pg:        # or: pg = PostgresServer(); pg.start(); ...; pg.cleanup()
    store = await PostgresMetadataStore.connect(pg.url)
    url = pg.fresh_database()       # an empty database of its own (CREATE DATABASE) for one test

The server itself is brokers/local_postgres.py (the dev cluster uses it too); this adds the temp
directory, its removal, and one empty database per caller so tests sharing a server do not see each
other's keys.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from brokers.local_postgres import LocalPostgres, postgres_available

__all__ = ["PostgresServer", "postgres_available"]


class PostgresServer(LocalPostgres):
    """A LocalPostgres in its own temp directory (removed by ``cleanup``)."""

    def __init__(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="tidelog-pg-"))
        base.chmod(0o755)
        super().__init__(base / "pg")
        self._base = base
        self._databases = itertools.count(1)

    def fresh_database(self) -> str:
        """Create an empty database and return its URL."""
        name = f"t{next(self._databases)}"
        subprocess.run(
            [str(self.bin_dir / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user(),
             "-d", "postgres", "-c", f"CREATE DATABASE {name}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        return f"postgresql://{self._user()}@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.kill()
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
