"""Searching a whole database for personal data, for erasure tests: every column of every table (FTS5
shadow tables and the kit's outbox, inbox, dead letters and audit log included), read with the URL given
(use the owner's: on PostgreSQL the test owner is a superuser, so row-level security hides nothing).

Values are compared as text: bytes are decoded, JSON values are searched both as stored and with
non-ASCII characters escaped (SQLite's JSON type stores "测试" as "\\u6d4b\\u8bd5"), case-insensitively."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class Hit:
    table: str
    column: str
    needle: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column} holds {self.needle!r}: {self.excerpt}"


def sync_url(url: str) -> str:
    parsed = make_url(url)
    driver = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _forms(needle: str) -> set[str]:
    escaped = json.dumps(needle, ensure_ascii=True)[1:-1]
    return {needle.casefold(), escaped.casefold()}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="ignore")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def find_personal_data(url: str, needles: Iterable[str]) -> list[Hit]:
    """Every (table, column) of the database at `url` holding one of `needles`."""
    wanted = {n: _forms(n) for n in needles if n}
    hits: list[Hit] = []
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            for table in sorted(sa.inspect(conn).get_table_names()):
                result = conn.execute(sa.text(f"SELECT * FROM {quote(table)}"))
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        text = _text(value)
                        folded = text.casefold()
                        for needle, forms in wanted.items():
                            if any(form in folded for form in forms):
                                hits.append(Hit(table, column, needle, text[:200]))
    finally:
        engine.dispose()
    return hits
