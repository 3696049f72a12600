"""Which column of a file holds which contact field.

A header that is a field name (`email`, `first_name`, `custom.segment`...; case, spaces and dashes do not
matter) or a known alias (`姓名`, `手机`, `E-mail`...) needs no mapping. A mapping names the field of any
other header, overrides a name, or ignores a column (an empty field or null). Unknown columns, a mapping
naming a column the file lacks, and two columns for one field are problems of the header (row 1): the
import stops before any row is applied, so a typo never silently drops a column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from crm_kit.errors import InvalidArgument

ID = "id"
NAME = "name"  # a full name, split into last and first name
CUSTOM_PREFIXES = ("custom.", "custom_fields.")
LIST_FIELDS = ("tags", "interests")
FIELDS = (
    ID,
    "external_id",
    "first_name",
    "last_name",
    NAME,
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
ALIASES = {
    "姓名": NAME,
    "全名": NAME,
    "full_name": NAME,
    "姓": "last_name",
    "名": "first_name",
    "surname": "last_name",
    "given_name": "first_name",
    "邮箱": "email",
    "电子邮件": "email",
    "电子邮箱": "email",
    "e_mail": "email",
    "手机": "phone",
    "手机号": "phone",
    "手机号码": "phone",
    "电话": "phone",
    "mobile": "phone",
    "标签": "tags",
    "tag": "tags",
    "职位": "job_title",
    "职务": "job_title",
    "title": "job_title",
    "部门": "department",
    "性别": "gender",
    "生日": "birthday",
    "出生日期": "birthday",
    "客户分类": "classification",
    "分类": "classification",
    "生命周期": "lifecycle_stage",
    "生命周期阶段": "lifecycle_stage",
    "stage": "lifecycle_stage",
    "来源": "source",
    "外部编号": "external_id",
    "外部id": "external_id",
    "负责人": "owner_id",
    "兴趣": "interests",
}
MAX_MAPPING = 20_000  # characters
_SEPARATORS = re.compile(r"[\s\-]+")


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    field: str  # a built-in field, or custom.<key>

    @property
    def custom_key(self) -> str | None:
        return self.field[len("custom.") :] if self.field.startswith("custom.") else None


@dataclass(frozen=True)
class HeaderProblem:
    column: str
    field: str
    problem: str


def parse_mapping(text: str) -> dict[str, str]:
    """A JSON object {"header": "field"} or lines `header: field` (also `=`, tab or comma); `#` comments.
    An empty or null field ignores the column. Raises INVALID_ARGUMENT naming `mapping`."""
    text = text.strip().lstrip("\ufeff")
    if not text:
        return {}
    if len(text) > MAX_MAPPING:
        raise InvalidArgument.field("mapping", f"must be at most {MAX_MAPPING} characters")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidArgument.field("mapping", f"is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str | None) for v in data.values()):
            raise InvalidArgument.field("mapping", 'must be an object {"column header": "field"}')
        return {str(k).strip(): (v or "").strip() for k, v in data.items()}
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for sep in (":", "=", "\t", ","):
            if sep in line:
                header, _, field = line.partition(sep)
                break
        else:
            raise InvalidArgument.field("mapping", f"line {number}: write `column header: field`")
        header, field = header.strip().strip("\"'"), field.strip().strip("\"'")
        if field.lower() in ("null", "none", "-"):
            field = ""
        out[header] = field
    return out


def canonical(name: str) -> str | None:
    """The field a header or a mapping target names, or None."""
    text = name.strip().lstrip("\ufeff")
    for prefix in CUSTOM_PREFIXES:
        if text.lower().startswith(prefix):
            key = text[len(prefix) :].strip()
            return f"custom.{key}" if key else None
    simple = _SEPARATORS.sub("_", text.lower())
    if simple in FIELDS:
        return simple
    return ALIASES.get(simple) or ALIASES.get(text)


def resolve(
    header: list[str], mapping: Mapping[str, str], custom_keys: Iterable[str]
) -> tuple[list[Column], list[HeaderProblem]]:
    """The columns to read, and the problems of the header (any problem stops the import)."""
    keys = set(custom_keys)
    problems: list[HeaderProblem] = []
    by_lower = {k.lower(): k for k in mapping}
    used: set[str] = set()
    columns: list[Column] = []
    for index, raw in enumerate(header):
        title = raw.strip().lstrip("\ufeff")
        if not title:
            continue
        mapped_key = title if title in mapping else by_lower.get(title.lower())
        if mapped_key is not None:
            used.add(mapped_key)
            target = mapping[mapped_key]
            if not target:
                continue  # ignored on purpose
            field = canonical(target)
            if field is None:
                problems.append(HeaderProblem(title, target, f"the mapping names an unknown field {target!r}"))
                continue
        else:
            field = canonical(title)
            if field is None:
                problems.append(
                    HeaderProblem(title, "", "unknown column: map it to a field with a mapping, or ignore it")
                )
                continue
        columns.append(Column(index, title, field))
    for key in mapping:
        if key not in used:
            problems.append(HeaderProblem(key, mapping[key], "the mapping names a column the file does not have"))
    seen: dict[str, str] = {}
    for column in columns:
        if column.field in seen:
            problems.append(
                HeaderProblem(column.header, column.field, f"the column {seen[column.field]!r} already holds it")
            )
        seen.setdefault(column.field, column.header)
        custom_key = column.custom_key
        if custom_key is not None and custom_key not in keys:
            problems.append(
                HeaderProblem(column.header, column.field, f"{custom_key!r} is not a custom field of contacts")
            )
    if NAME in seen and ("first_name" in seen or "last_name" in seen):
        problems.append(HeaderProblem(seen[NAME], NAME, "give either a full name or first and last names"))
    return columns, problems
