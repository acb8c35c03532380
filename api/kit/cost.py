"""A request's cost against the operator's limits (``KDSERVE_MAX_JOB_*``): one wording for
every refusal, naming the field, the value, the limit and its setting, and what to change."""

from __future__ import annotations

from api.kit.errors import OverLimit
from store.settings import Settings


def check_limit(
    field: str, what: str, value: int | None, limit: int, setting: str, instead: str
) -> None:
    """Raises: OverLimit: ``value`` is over ``limit`` (None: unknown, not checked)."""
    if value is not None and value > limit:
        raise OverLimit(
            f"{field}: {what}, over this service's limit of {limit:,} ({setting}); {instead}",
            errors=[{"loc": field.split("."), "msg": f"{value:,} is over {limit:,} ({setting})"}],
        )


def check_model(
    settings: Settings,
    *,
    field: str,
    what: str,
    params: int | None,
    macs: int | None,
    instead: str,
) -> None:
    """A model's parameters and MACs per sample (None: unknown) against the limits.

    Raises:
        OverLimit: naming ``field`` and ``what`` ("the student"), and suggesting ``instead``.
    """
    check_limit(
        field,
        f"{what} has {params or 0:,} parameters ({size(4 * (params or 0))} as float32)",
        params,
        settings.max_job_params,
        "KDSERVE_MAX_JOB_PARAMS",
        f"use {instead}",
    )
    check_limit(
        field,
        f"{what}'s forward pass takes {macs or 0:,} multiply-accumulates per sample",
        macs,
        settings.max_job_macs,
        "KDSERVE_MAX_JOB_MACS",
        f"use {instead}, or smaller samples",
    )


def size(n: int) -> str:
    """``n`` bytes in a readable unit (binary prefixes)."""
    units, value, i = ("bytes", "KiB", "MiB", "GiB", "TiB"), float(n), 0
    while value >= 1024 and i < len(units) - 1:
        value, i = value / 1024, i + 1
    return f"{n:,} bytes" if i == 0 else f"{value:,.1f} {units[i]}"
