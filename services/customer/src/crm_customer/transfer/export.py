"""Export of any filtered contact list: the rows of `crm_customer.search.list_contacts` with the same
filters, order and visibility as ListContacts, read in keyset pages of PAGE rows (constant memory per page),
written as CSV (UTF-8 with a BOM, so Excel reads Chinese) or XLSX (openpyxl's write-only mode).

The columns are the import's field names (id first, then external_id ...; custom fields as custom.<key>),
so an exported file imports back with zero changes: every row matches its contact by id.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from crm.customer.v1 import transfer_pb2
from crm_customer import search
from crm_customer.custom_fields import CONTACT, Catalog
from crm_customer.models import Contact
from crm_customer.transfer.reader import CSV, CSV_MEDIA_TYPE, XLSX, XLSX_MEDIA_TYPE
from crm_kit.context import Principal
from crm_kit.errors import FailedPrecondition, InvalidArgument

PAGE = 500
MAX_BYTES = 60 * 1024 * 1024  # one gRPC message (the service and the gateway accept 64 MiB)
COLUMNS = (
    "id",
    "external_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "tags",
    "job_title",
    "department",
    "gender",
    "birthday",
    "classification",
    "lifecycle_stage",
    "source",
    "owner_id",
    "account_id",
    "interests",
)
FILTERS = (
    "owner_id",
    "account_id",
    "tag",
    "q",
    "tags",
    "classification",
    "lifecycle_stage",
    "source",
    "external_id",
    "created_after",
    "created_before",
    "updated_after",
    "updated_before",
    "order_by",
    "custom_filter",
)


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ";".join(text(v) for v in value)
    return str(value)


def cells(row: Contact, keys: list[str]) -> list[str]:
    custom = row.custom_fields or {}
    return [text(getattr(row, c)) for c in COLUMNS] + [text(custom.get(k)) for k in keys]


async def export(
    session: AsyncSession, request: transfer_pb2.ExportContactsRequest, principal: Principal | None
) -> transfer_pb2.ExportFile:
    fmt = request.format.strip().lower().lstrip(".") or CSV
    if fmt not in (CSV, XLSX):
        raise InvalidArgument.field("format", "must be csv or xlsx")
    query = SimpleNamespace(**{name: getattr(request, name) for name in FILTERS}, page_size=PAGE, page_token="")
    catalog = await Catalog.load(session, CONTACT)
    keys = sorted(catalog.by_key)
    header = [*COLUMNS, *(f"custom.{k}" for k in keys)]
    writer = _Csv(header) if fmt == CSV else _Xlsx(header)
    while True:
        rows, token = await search.list_contacts(session, query, principal)
        for row in rows:
            writer.add(cells(row, keys))
        if writer.size > MAX_BYTES:
            raise FailedPrecondition("the export is larger than 60 MiB; narrow it with filters")
        session.expunge_all()  # constant memory per page
        if not token:
            break
        query.page_token = token
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    media = CSV_MEDIA_TYPE + "; charset=utf-8" if fmt == CSV else XLSX_MEDIA_TYPE
    return transfer_pb2.ExportFile(content_type=media, filename=f"contacts-{stamp}.{fmt}", content=writer.finish())


class _Csv:
    def __init__(self, header: list[str]) -> None:
        self.buffer = io.StringIO()
        self.buffer.write("\ufeff")
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")
        self.writer.writerow(header)

    @property
    def size(self) -> int:
        return self.buffer.tell() * 2  # an upper bound of the UTF-8 size for the CJK-heavy case

    def add(self, row: list[str]) -> None:
        self.writer.writerow(row)

    def finish(self) -> bytes:
        return self.buffer.getvalue().encode("utf-8")


class _Xlsx:
    def __init__(self, header: list[str]) -> None:
        from openpyxl import Workbook

        self.book = Workbook(write_only=True)
        self.sheet = self.book.create_sheet("contacts")
        self.sheet.append(header)
        self.chars = 0

    @property
    def size(self) -> int:
        return self.chars  # the zipped sheet is far smaller than its text

    def add(self, row: list[str]) -> None:
        self.chars += sum(len(c) for c in row)
        # Text that starts with "=" stays text (openpyxl would write it as a formula).
        self.sheet.append([self._text(c) if c.startswith("=") else c for c in row])

    def _text(self, value: str) -> Any:
        from openpyxl.cell import WriteOnlyCell

        cell = WriteOnlyCell(self.sheet, value)
        cell.data_type = "s"
        return cell

    def finish(self) -> bytes:
        out = io.BytesIO()
        self.book.save(out)
        return out.getvalue()
