"""``"temperature": "auto"`` and ``"alpha": "auto"``: chosen on the validation split by probes.

The rule: a short KD run ("probe") for each candidate, the candidates being the grid of
:data:`TEMPERATURES` × :data:`ALPHAS` over whichever of the two is ``"auto"`` (the other keeps
its value). A probe is the job's own config with method ``kd`` (FitNets too: the probes
choose the KD stage's weights), ``epochs`` = :func:`probe_epochs` (a tenth of the job's,
at least 1, the same cosine schedule compressed into them), the same data, split, seed and
teacher-cache entry. The winner is the probe with the best validation accuracy of its best
epoch, then the lower validation NLL, then the earlier candidate in the grid's order.

Cost: ``len(candidates) · probe_epochs`` KD epochs before the job, about 60% of the job's
main stage when both are ``"auto"`` (6 probes of a tenth each), 30% for temperature alone,
20% for alpha alone; with the teacher cache the probes read the job's entry (built once),
so they run at scratch speed. Probes are a cheap guide, not a sweep: for a thorough search,
POST /v1/sweeps.

Why these candidates: T ∈ {2, 4, 8} spans the temperatures Hinton et al. and later work
found best for classifiers (2–8; 20 only for very small students on MNIST); alpha 0.1 is
Hinton et al.'s "considerably lower weight" on the hard labels, 0.5 the equal weighting
that guards against a teacher whose errors would otherwise be copied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdcore.contract import AUTO, DistillConfig

TEMPERATURES: tuple[float, ...] = (2.0, 4.0, 8.0)
ALPHAS: tuple[float, ...] = (0.1, 0.5)
PROBE_FRACTION = 0.1


@dataclass(frozen=True)
class ProbeResult:
    """A probe's best validation epoch."""

    val_accuracy: float
    val_nll: float


# Runs one probe config under a name (a folder), returns its best validation epoch.
RunProbe = Callable[[DistillConfig, str], ProbeResult]


def probe_epochs(epochs: int) -> int:
    """Epochs of one probe: a tenth of the job's main stage, at least 1."""
    return max(1, math.ceil(epochs * PROBE_FRACTION))


def candidates(config: DistillConfig) -> list[tuple[float, float]]:
    """The ``(temperature, alpha)`` pairs the probes try, in tie-breaking order."""
    temps = TEMPERATURES if config.temperature == AUTO else (config.temperature,)
    alphas = ALPHAS if config.alpha == AUTO else (config.alpha,)
    return [(float(t), float(a)) for t in temps for a in alphas]


def probe_config(config: DistillConfig, temperature: float, alpha: float) -> DistillConfig:
    """The config of one probe (see the module's docstring)."""
    return config.model_copy(
        update={
            "method": "kd",
            "hint": None,
            "epochs": probe_epochs(config.epochs),
            "temperature": temperature,
            "alpha": alpha,
            "checkpoint": "best",
            "patience": None,
            "baseline": False,
        }
    )


def choose_kd_weights(
    config: DistillConfig, run_probe: RunProbe
) -> tuple[DistillConfig, dict[str, Any] | None]:
    """``config`` with ``"auto"`` temperature/alpha resolved by probes, and the record of
    the choice (None when neither is ``"auto"`` or the method has no KD stage).

    Raises:
        ValueError: no validation data to choose on (from ``run_probe``).
    """
    wanted = [f for f in ("temperature", "alpha") if f in config.auto_fields]
    if not wanted:
        return config, None
    started = time.perf_counter()
    probes = []
    for t, a in candidates(config):
        result = run_probe(probe_config(config, t, a), f"T{t:g}-alpha{a:g}")
        probes.append(
            {
                "temperature": t,
                "alpha": a,
                "val_accuracy": result.val_accuracy,
                "val_nll": result.val_nll,
            }
        )
    best = max(
        enumerate(probes), key=lambda ip: (ip[1]["val_accuracy"], -ip[1]["val_nll"], -ip[0])
    )[1]
    chosen = {f: best[f] for f in ("temperature", "alpha")}
    record = {
        "fields": wanted,
        "value": {f: best[f] for f in wanted},
        "rule": (
            f"best validation accuracy (then lower NLL) of {len(probes)} KD probes of "
            f"{probe_epochs(config.epochs)} epoch(s) each"
        ),
        "probes": probes,
        "seconds": time.perf_counter() - started,
    }
    return config.model_copy(update=chosen), record
