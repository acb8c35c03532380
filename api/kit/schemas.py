"""Pieces of response schemas shared by several domains."""

from __future__ import annotations

import json
import math
from typing import Any

from api.kit.errors import Invalid
from kdcore.contract import MAX_INPUT_VALUES, load_json

DEFAULT_PAGE = 50
MAX_PAGE = 200


def parse_shape(value: Any, field: str = "input_shape") -> list[int]:
    """``[3, 32, 32]``, ``"3,32,32"`` or ``"[3, 32, 32]"`` → positive ints, at most
    ``MAX_INPUT_VALUES`` values in all."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = (
                load_json(text)
                if text.startswith("[")
                else [int(p) for p in text.replace("x", ",").split(",", 4)]
            )
        except ValueError:  # an empty or non-numeric part ("3,,32", "3,x"), or bad JSON
            value = None
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 4
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise Invalid(f"{field} must be 1 to 4 positive integers such as 3,32,32")
    if math.prod(value) > MAX_INPUT_VALUES:
        raise Invalid(
            f"{field} {value} has more than the {MAX_INPUT_VALUES:,} values per sample supported"
        )
    return value


# Text that goes into the database: no control characters (Postgres refuses NUL outright).
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"


def plain_text(value: str, field: str, max_length: int = 200) -> str:
    """``value`` if it is printable and short enough for its column, else a 422."""
    if len(value) > max_length or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid(f"{field} must be at most {max_length} printable characters")
    return value


def parse_json_object(value: str | None, field: str) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    try:
        obj = load_json(value)
    except json.JSONDecodeError as exc:
        raise Invalid(f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise Invalid(f"{field} must be a JSON object")
    return obj
