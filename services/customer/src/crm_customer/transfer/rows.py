"""One row of a file -> what applying it means: create these values, update that contact with these,
nothing changed, or the row's problems.

The values come from the very code CreateContact and UpdateContact run (`crm_customer.rules.contact_values`
and `crm_customer.custom_fields.values_for_create/values_for_update` with the tenant's catalog), so an
import normalises and refuses exactly what the API does. Only the translation of cell text into the
request's shape lives here (a list cell split on ; , |; a full name split; Chinese words for enumerations;
typed custom values).

Matching: a row with `id` updates that contact; else one with `external_id` updates the contact holding it
(or creates one that will); else, with match_email, the single contact with that email; else a create.
On an update, an empty cell leaves the stored value as it is (a sparse file never wipes data); on a create
it means the field's default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm.customer.v1 import customer_pb2
from crm_customer import custom_fields, rules
from crm_customer.contact_points import email as normalise_email
from crm_customer.custom_fields import Catalog
from crm_customer.models import Account, Contact, external_id_in
from crm_customer.names import display_name
from crm_customer.settings import CustomerSettings
from crm_customer.transfer.columns import ID, LIST_FIELDS, NAME, Column
from crm_kit.access import OwnerAccess, can_see
from crm_kit.context import Principal
from crm_kit.errors import CrmError, InvalidArgument, Violations

CREATE, UPDATE, UNCHANGED = "create", "update", "unchanged"
MAX_VALUE = 200
LIST_SPLIT = re.compile("[;,|\uff1b\uff0c\u3001\n]")  # also the full-width ; , and 、
WORDS: dict[str, dict[str, str]] = {
    "gender": {"男": "male", "女": "female", "其他": "other", "未知": "unknown", "m": "male", "f": "female"},
    "classification": {"核心": "core", "潜在": "potential", "一般": "general", "普通": "general"},
    "lifecycle_stage": {
        "线索": "lead",
        "潜在客户": "prospect",
        "商机": "prospect",
        "客户": "customer",
        "成交客户": "customer",
        "忠诚客户": "loyal",
        "忠实客户": "loyal",
        "流失": "churned",
        "流失客户": "churned",
    },
}
TRUE = {"true", "yes", "y", "1", "是", "对", "真"}
FALSE = {"false", "no", "n", "0", "否", "不", "假"}
COMPOUND_SURNAMES = frozenset(
    [
        "欧阳",
        "司马",
        "上官",
        "诸葛",
        "东方",
        "皇甫",
        "尉迟",
        "公孙",
        "慕容",
        "长孙",
        "宇文",
        "司徒",
        "夏侯",
        "轩辕",
        "令狐",
        "独孤",
        "南宫",
        "西门",
        "端木",
        "百里",
    ]
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
ACCESS = OwnerAccess("owner_id")


@dataclass(frozen=True)
class Problem:
    row: int
    column: str
    field: str
    value: str
    problem: str


@dataclass
class RowInput:
    number: int
    cells: dict[str, str]  # field -> cell text
    headers: dict[str, str]  # field -> column header

    def get(self, name: str) -> str:
        return self.cells.get(name, "").strip()


class Snapshot:
    """A contact's column values as attributes: what planning and `contact_message` read, without an ORM
    instance (planning may run in a worker process, and a row inserted by a bulk statement has none)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only called for a name that is not a column: for mypy
        raise AttributeError(name)

    @property
    def display_name(self) -> str:
        return display_name(self.__dict__["first_name"], self.__dict__["last_name"])


# What planning reads of a stored contact (not the search document).
SNAPSHOT_COLUMNS = tuple(c.key for c in Contact.__table__.columns if c.key not in ("search_text", "search_rowid"))


@dataclass
class Plan:
    number: int
    action: str
    values: dict[str, Any] = field(default_factory=dict)
    target: Any = None  # the contact updated: a Snapshot when planned, the locked ORM row when applied
    before: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What planning a row needs from the database, loaded once per import or per chunk."""

    settings: CustomerSettings
    catalog: Catalog
    principal: Principal | None
    match_email: bool
    accounts: dict[str, str] = field(default_factory=dict)  # id -> name, of the accounts rows name
    by_id: dict[str, Snapshot] = field(default_factory=dict)
    by_external_id: dict[str, Snapshot] = field(default_factory=dict)
    by_email: dict[str, list[Snapshot]] = field(default_factory=dict)


def inputs(columns: Sequence[Column], rows: Iterable[tuple[int, list[str]]]) -> list[RowInput]:
    headers = {c.field: c.header for c in columns}
    out = []
    for number, cells in rows:
        values = {c.field: (cells[c.index] if c.index < len(cells) else "") for c in columns}
        out.append(RowInput(number, values, headers))
    return out


def split_list(text: str) -> list[str]:
    return [part.strip() for part in LIST_SPLIT.split(text) if part.strip()]


def split_name(full: str) -> tuple[str, str]:
    """(first_name, last_name) of a full name: 张伟 -> (伟, 张), 欧阳娜娜 -> (娜娜, 欧阳), Ada Lovelace ->
    (Ada, Lovelace); one Latin word is a last name."""
    full = " ".join(full.split())
    if not full:
        return "", ""
    if _CJK.match(full) and " " not in full:
        surname = full[:2] if full[:2] in COMPOUND_SURNAMES and len(full) > 2 else full[:1]
        return full[len(surname) :], surname
    first, _, last = full.rpartition(" ")
    return first, last


def _word(name: str, text: str) -> str:
    return WORDS.get(name, {}).get(text.strip().lower(), text)


def custom_value(v: Violations, catalog: Catalog, key: str, text: str) -> Any:
    """A cell's text as the typed value custom_fields validates (None: no value)."""
    text = text.strip()
    definition = catalog.get(key)
    if not text or definition is None:
        return None
    kind = definition.type
    if kind == custom_fields.NUMBER:
        try:
            return float(text.replace(",", "").replace("_", ""))
        except ValueError:
            v.add(custom_fields.field_name(key), f"must be a number, not {text[:40]!r}")
            return None
    if kind == custom_fields.BOOLEAN:
        lowered = text.lower()
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
        v.add(custom_fields.field_name(key), f"must be true or false, not {text[:40]!r}")
        return None
    if kind == custom_fields.MULTI_SELECT:
        return split_list(text)
    return text


def message(inp: RowInput, catalog: Catalog, v: Violations, *, update: bool) -> tuple[Any, list[str], list[str]]:
    """The row as a Contact message, the built-in fields it writes and the custom keys it writes. On an
    update, empty cells write nothing."""
    msg = customer_pb2.Contact()
    fields: list[str] = []
    keys: list[str] = []
    custom: dict[str, Any] = {}
    for name, raw in inp.cells.items():
        text = raw.strip()
        if name == ID or (update and not text):
            continue
        if name.startswith("custom."):
            key = name[len("custom.") :]
            value = custom_value(v, catalog, key, text)
            if value is not None:
                custom[key] = value
            keys.append(key)
        elif name == NAME:
            first, last = split_name(text)
            msg.first_name, msg.last_name = first, last
            fields += ["first_name", "last_name"]
        elif name in LIST_FIELDS:
            getattr(msg, name).extend(split_list(text))
            fields.append(name)
        else:
            setattr(msg, name, _word(name, raw))
            fields.append(name)
    custom_fields.fill(msg.custom_fields, custom)
    return msg, fields, keys


def _violations(exc: CrmError) -> list[Any]:
    return exc.violations or [type("V", (), {"field": "", "description": exc.message})()]


def validate(inp: RowInput, ctx: Context, current: Snapshot | None) -> tuple[dict[str, Any], Violations]:
    """The normalised values of a create (`current` None) or an update, and the row's violations."""
    v = Violations()
    msg, fields, keys = message(inp, ctx.catalog, v, update=current is not None)
    try:
        if current is None:
            values = rules.contact_values(msg, rules.CONTACT_FIELDS, ctx.settings)
        else:
            values = rules.contact_values(msg, fields, ctx.settings, current)
    except InvalidArgument as exc:
        v.items.extend(exc.violations)
        values = {}
    if current is None:
        values[custom_fields.FIELD] = custom_fields.values_for_create(v, ctx.catalog, msg.custom_fields)
    elif keys:
        split = custom_fields.MaskSplit([], False, keys)
        values[custom_fields.FIELD] = custom_fields.values_for_update(
            v, ctx.catalog, current.custom_fields, msg.custom_fields, split
        )
    account_id = values.get("account_id") or ""
    if account_id and account_id not in ctx.accounts:
        v.add("account_id", f"account {account_id!r} does not exist")
    if not v:
        try:
            if current is None:
                ACCESS.on_create(values, ctx.principal)
            else:
                ACCESS.on_update(current, values, ctx.principal)
        except CrmError as exc:
            v.items.extend(_violations(exc))
    return values, v


def _target(inp: RowInput, ctx: Context, v: Violations) -> Snapshot | None:
    contact_id = inp.get(ID)
    external_id = " ".join(inp.get("external_id").split())
    if contact_id:
        row = ctx.by_id.get(contact_id)
        if row is None or not can_see(ctx.principal, row):
            v.add(ID, f"no contact {contact_id!r} in this tenant")
            return None
        other = ctx.by_external_id.get(external_id) if external_id else None
        if other is not None and other.id != row.id:
            v.add("external_id", "is already used by another contact")
        return row
    if external_id:
        row = ctx.by_external_id.get(external_id)
        if row is not None and not can_see(ctx.principal, row):
            v.add("external_id", "is already used by a contact you cannot see")
        return row
    if ctx.match_email and inp.get("email"):
        found = ctx.by_email.get(normalise_email(Violations(), "email", inp.get("email")), [])
        visible = [r for r in found if can_see(ctx.principal, r)]
        if len(visible) > 1:
            v.add("email", f"{len(visible)} contacts have this email: give the row an id or an external_id")
        return visible[0] if len(visible) == 1 else None
    return None


def plan(inp: RowInput, ctx: Context) -> Plan | list[Problem]:
    v = Violations()
    target = _target(inp, ctx, v)
    if v:
        return problems(inp, v)
    values, v = validate(inp, ctx, target)
    if v:
        return problems(inp, v)
    if target is None:
        return Plan(inp.number, CREATE, values)
    before = {k: getattr(target, k) for k, new in values.items() if getattr(target, k) != new}
    if not before:
        return Plan(inp.number, UNCHANGED, target=target)
    return Plan(inp.number, UPDATE, {k: values[k] for k in before}, target, before)


def _column_of(inp: RowInput, name: str) -> tuple[str, str]:
    """The column (header, cell) a violation's field came from."""
    root = re.split(r"[.\[]", name, maxsplit=1)[0]
    if root == custom_fields.FIELD and "." in name:
        candidates = ["custom." + name.split(".", 1)[1]]
    elif root in ("phones", "phone"):
        candidates = ["phone"]
    elif root in ("emails", "email"):
        candidates = ["email"]
    elif root in ("first_name", "last_name"):
        candidates = [root, NAME, "last_name" if root == "first_name" else "first_name"]
    else:
        candidates = [root]
    for candidate in candidates:
        if candidate in inp.headers:
            return inp.headers[candidate], inp.cells.get(candidate, "")
    return "", ""


def problems(inp: RowInput, v: Violations) -> list[Problem]:
    out = []
    for item in v.items:
        header, value = _column_of(inp, item.field)
        out.append(Problem(inp.number, header, item.field, value.strip()[:MAX_VALUE], item.description))
    return out


# --- loading what planning needs -------------------------------------------------------------------------

CHUNK = 500


async def _in_chunks(session: AsyncSession, column: Any, values: Iterable[str]) -> list[Snapshot]:
    wanted = list(dict.fromkeys(v for v in values if v))
    found: list[Snapshot] = []
    columns = [getattr(Contact, name) for name in SNAPSHOT_COLUMNS]
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        where = external_id_in(*part) if column is Contact.external_id else column.in_(part)
        stmt = select(*columns).where(where)
        found.extend(Snapshot(dict(r._mapping)) for r in (await session.execute(stmt)).all())
    return found


async def load(session: AsyncSession, ctx: Context, batch: Sequence[RowInput]) -> Context:
    """A copy of ctx with the lookups one batch of rows needs (every contact of the tenant, visible or not:
    planning decides what a caller may do with it). Account names accumulate in ctx."""
    by_id = {r.id: r for r in await _in_chunks(session, Contact.id, (i.get(ID) for i in batch))}
    externals = (" ".join(i.get("external_id").split()) for i in batch)
    by_external_id = {r.external_id: r for r in await _in_chunks(session, Contact.external_id, externals)}
    for row in by_id.values():
        if row.external_id:
            by_external_id.setdefault(row.external_id, row)
    by_email: dict[str, list[Snapshot]] = {}
    if ctx.match_email:
        emails = [
            normalise_email(Violations(), "email", i.get("email"))
            for i in batch
            if i.get("email") and not i.get(ID) and not i.get("external_id")
        ]
        for row in await _in_chunks(session, Contact.email, emails):
            by_email.setdefault(row.email, []).append(row)
    wanted = [a for a in dict.fromkeys(i.get("account_id") for i in batch) if a and a not in ctx.accounts]
    for start in range(0, len(wanted), CHUNK):
        stmt = select(Account.id, Account.name).where(Account.id.in_(wanted[start : start + CHUNK]))
        ctx.accounts.update({str(i): str(n) for i, n in (await session.execute(stmt)).all()})
    return replace(ctx, by_id=by_id, by_external_id=by_external_id, by_email=by_email)


def duplicates(batch: Sequence[RowInput]) -> dict[int, list[Problem]]:
    """Rows sharing an id or an external_id with another row of the file: none of them is applied (which one
    is right cannot be known)."""
    out: dict[int, list[Problem]] = {}
    for name in (ID, "external_id"):
        first: dict[str, list[RowInput]] = {}
        for inp in batch:
            key = " ".join(inp.get(name).split())
            if key:
                first.setdefault(key, []).append(inp)
        for key, group in first.items():
            if len(group) < 2:
                continue
            numbers = ", ".join(str(i.number) for i in group[:10])
            for inp in group:
                out.setdefault(inp.number, []).append(
                    Problem(
                        inp.number,
                        inp.headers.get(name, name),
                        name,
                        key[:MAX_VALUE],
                        f"appears on several rows of the file ({numbers}); none of them is applied",
                    )
                )
    return out
