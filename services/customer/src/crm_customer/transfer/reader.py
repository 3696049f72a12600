"""Reading an uploaded file into a header and rows of text.

CSV: UTF-8 (a BOM is dropped), else GB18030 (what Excel writes for Chinese Windows locales); the dialect
(comma, semicolon, tab) is sniffed from the first lines. XLSX: the first worksheet (openpyxl, read-only);
numbers that are whole print without ".0" (phone numbers typed as numbers), dates as YYYY-MM-DD.
Row numbers are the file's: the header is row 1. Blank rows are skipped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

CSV = "csv"
XLSX = "xlsx"
FORMATS = (CSV, XLSX)
XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MEDIA_TYPE = "text/csv"
ZIP_MAGIC = b"PK\x03\x04"


class UnreadableFile(ValueError):
    """The file cannot be read as the format it claims; the message says why."""


@dataclass
class Table:
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (row number in the file, cells)


def guess_format(fmt: str, filename: str, content_type: str, content: bytes) -> str:
    """The format named, else the file name's extension, else the media type, else the content's magic."""
    fmt = fmt.strip().lower().lstrip(".")
    if fmt:
        return fmt
    name = filename.strip().lower()
    if name.endswith(".xlsx"):
        return XLSX
    if name.endswith((".csv", ".txt")):
        return CSV
    media = content_type.split(";")[0].strip().lower()
    if media == XLSX_MEDIA_TYPE:
        return XLSX
    if media in (CSV_MEDIA_TYPE, "text/plain", "application/csv"):
        return CSV
    return XLSX if content.startswith(ZIP_MAGIC) else CSV


def decode(content: bytes) -> str:
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return content.decode("gb18030")
    except UnicodeDecodeError:
        raise UnreadableFile("the file is neither UTF-8 nor GB18030 text; save it as CSV UTF-8") from None


def _blank(cells: list[str]) -> bool:
    return not any(c.strip() for c in cells)


def read_csv(content: bytes) -> Table:
    text = decode(content)
    sample = text[:8192]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        if dialect.delimiter == "|":  # tags are often separated by | inside a comma-separated file
            dialect = csv.excel
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    return _table(enumerate(_lines(reader), start=1))


def _lines(reader: Any) -> Iterator[list[str]]:
    try:
        yield from reader
    except csv.Error as exc:
        raise UnreadableFile(f"the CSV is malformed near line {reader.line_num}: {exc}") from None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def read_xlsx(content: bytes) -> Table:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds (zip, XML, KeyError) for a damaged file
        raise UnreadableFile(f"the file is not a readable XLSX workbook: {type(exc).__name__}") from None
    try:
        sheet = book.worksheets[0] if book.worksheets else None
        if sheet is None:
            raise UnreadableFile("the workbook has no worksheet")
        numbered = (
            (i, [_cell(v) for v in values]) for i, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        )
        return _table(numbered)
    finally:
        book.close()


def _table(numbered: Iterator[tuple[int, list[str]]]) -> Table:
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for number, cells in numbered:
        if header is None:
            if _blank(cells):
                continue
            header = [c.strip() for c in cells]
            while header and not header[-1]:
                header.pop()
            if number != 1:
                raise UnreadableFile(f"the header must be on row 1 (found it on row {number})")
            continue
        if not _blank(cells):
            rows.append((number, cells))
    if header is None:
        raise UnreadableFile("the file is empty: the first row must hold the column headers")
    return Table(header, rows)


def read(fmt: str, content: bytes) -> Table:
    if fmt == XLSX:
        return read_xlsx(content)
    return read_csv(content)
