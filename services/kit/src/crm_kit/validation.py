"""Field validators shared by every service. Each records a violation naming the field instead of raising,
so one response lists every problem with the input."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation

from crm_kit.errors import Violations

CURRENCY = re.compile(r"^[A-Z]{3}$")
ID = re.compile(r"^[0-9a-fA-F-]{1,64}$")


def text(v: Violations, field: str, value: str, *, required: bool = False, max_length: int = 255) -> str:
    value = " ".join(value.split()) if "\n" not in value else value.strip()
    if required and not value:
        v.add(field, "is required")
    elif len(value) > max_length:
        v.add(field, f"must be at most {max_length} characters")
    return value


def one_of(v: Violations, field: str, value: str, choices: tuple[str, ...], default: str = "") -> str:
    value = value.strip().lower() or default
    if value not in choices:
        v.add(field, f"must be one of: {', '.join(choices)}")
    return value


def decimal_string(v: Violations, field: str, value: str, *, default: str = "0", max_digits: int = 18) -> str:
    value = value.strip() or default
    try:
        number = Decimal(value)
    except InvalidOperation:
        v.add(field, "must be a decimal number such as 1234.50")
        return value
    if not number.is_finite():
        v.add(field, "must be a finite number")
        return value
    exponent = int(number.as_tuple().exponent)
    # Digits written out in fixed point: "1e20" has 21, not 1 (and would overflow quantize below).
    digits = len(number.as_tuple().digits) + max(exponent, 0)
    if number < 0:
        v.add(field, "must not be negative")
    elif digits > max_digits or exponent < -4:
        v.add(field, f"must have at most {max_digits} digits and 4 decimals")
    else:
        number = number.copy_abs()  # "-0" is 0.00
        return format(number.quantize(Decimal("0.01")) if exponent >= -2 else number, "f")
    return value


def currency(v: Violations, field: str, value: str, *, default: str = "") -> str:
    value = value.strip().upper() or default
    if not CURRENCY.match(value):
        v.add(field, "must be an ISO 4217 code such as CNY or USD")
    return value


def iso_date(v: Violations, field: str, value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        v.add(field, "must be a date in the form YYYY-MM-DD")
        return value


def reference(v: Violations, field: str, value: str, *, required: bool = False) -> str:
    value = value.strip()
    if not value:
        if required:
            v.add(field, "is required")
        return ""
    if not ID.match(value):
        v.add(field, "is not a valid id")
    return value
