"""People's names: how they are displayed (Chinese, Japanese and Korean names family name first, without a
space) and title-cased when a tenant wants it (Latin script only)."""

from __future__ import annotations

import re
import unicodedata

# Han (with extensions and compatibility ideographs), kana, Hangul and CJK punctuation.
_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3100, 0x312F),  # bopomofo
    (0x3130, 0x318F),  # Hangul compatibility jamo
    (0x31F0, 0x31FF),  # katakana extensions
    (0x3400, 0x4DBF),  # Han extension A
    (0x4E00, 0x9FFF),  # Han
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width katakana
    (0x20000, 0x323AF),  # Han extensions B to H
)
_CJK_CLASS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _CJK_RANGES)
CJK_RUN = re.compile(f"[{_CJK_CLASS}]+")
_WORD_PARTS = re.compile(r"([\s\-'\u2019.]+)")  # spaces, hyphens, apostrophes, dots


def is_cjk(ch: str) -> bool:
    return CJK_RUN.match(ch) is not None


def has_cjk(text: str) -> bool:
    return CJK_RUN.search(text) is not None


def display_name(first_name: str, last_name: str) -> str:
    """ "{last}{first}" when either part is written in CJK script (张伟), else "{first} {last}"."""
    first, last = first_name.strip(), last_name.strip()
    if has_cjk(first) or has_cjk(last):
        return f"{last}{first}"
    return " ".join(p for p in (first, last) if p)


def is_latin(text: str) -> bool:
    """Every letter of `text` is Latin script (and there is at least one)."""
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and all(unicodedata.name(ch, "").startswith("LATIN") for ch in letters)


def title_case(name: str) -> str:
    """ "zhang wei" -> "Zhang Wei", "O'NEILL" -> "O'Neill", "mary-jane" -> "Mary-Jane"; a part already in
    mixed case ("McDonald", "DeVito") is kept, and names in other scripts are returned unchanged."""
    if not is_latin(name):
        return name
    out: list[str] = []
    for part in _WORD_PARTS.split(name):
        if part and part.isalpha() and (part.islower() or part.isupper()):
            part = part[0].upper() + part[1:].lower()
        out.append(part)
    return "".join(out)
