"""Engines and sessions for one service database (SQLite locally, PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from crm_kit.db import tenancy


class GuardedSession(Session):
    """The sync session behind every AsyncSession: carries the tenant guard."""


tenancy.install(GuardedSession)


def async_url(url: str) -> str:
    """Accept plain URLs from operators and pick the async driver the kit runs on."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    # SQLite's default page cache is 2 MB: a table of 100k contacts with its indexes would be read back
    # from the OS on every write. The cache grows only as pages are used.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    url = async_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


class Database:
    """One service's database: an engine plus guarded sessions."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = async_url(url)
        self.engine = create_engine(self.url, **engine_kwargs)
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=GuardedSession
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error.

        `write`: on SQLite the transaction takes the write lock before its first statement (BEGIN IMMEDIATE),
        so what it reads cannot change before it writes, even when another process writes the same file
        (the driver otherwise begins a transaction only at the first write, and reads before it see no lock).
        PostgreSQL needs nothing: its transactions begin with the first statement, and locks come with
        SELECT ... FOR UPDATE.
        """
        async with self.sessions() as session, session.begin():
            if write and self.dialect == "sqlite":
                await session.execute(text("BEGIN IMMEDIATE"))
            yield session

    async def analyze(self, *tables: str) -> None:
        """Refresh the planner statistics of `tables` around a bulk change. Stale statistics (gathered when
        the table was small, or never) make `tenant_id = ?` look like a few rows, so a lookup of many ids
        reads the whole tenant through a tenant-led index instead of using the primary key: a bulk load
        turns quadratic.

        SQLite never gathers statistics by itself, and a connection reads them when it opens, so the pooled
        connections are replaced (those in use are closed when they come back). On PostgreSQL autovacuum
        would, a minute or so later; the application role is no owner, so it goes through `crm_analyze`
        (crm_kit.db.migrations.create_analyze_function)."""
        if self.dialect == "sqlite":
            async with self.engine.connect() as connection:
                await connection.exec_driver_sql("PRAGMA analysis_limit=0")
                for table in tables:
                    await connection.exec_driver_sql(f'ANALYZE "{table}"')
                await connection.commit()
            await self.engine.dispose()
        elif self.dialect == "postgresql":
            async with self.engine.begin() as connection:
                for table in tables:
                    await connection.execute(text("SELECT crm_analyze(:t)"), {"t": table})

    async def dispose(self) -> None:
        await self.engine.dispose()
