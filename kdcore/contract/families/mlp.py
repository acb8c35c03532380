"""The ``mlp`` family: flatten, hidden ``Linear → ReLU → Dropout`` layers, a linear head.

``{"family": "mlp", "hidden": [1200, 1200], "dropout": 0.0, "input_dropout": 0.0}``
(Hinton et al.'s MNIST nets: 2×1200 teacher, 2×800 student). The torch builder is
:func:`kdcore.models.mlp.build_mlp`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field

from kdcore.contract.bounds import MAX_FEATURES, MAX_LAYERS
from kdcore.contract.cost import Cost, linear, total
from kdcore.contract.registry import Family, Shape, Spec, register_family


class MlpSpec(Spec):
    family: Literal["mlp"]
    hidden: list[Annotated[int, Field(gt=0, le=MAX_FEATURES)]] = Field(
        min_length=1, max_length=MAX_LAYERS
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    input_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def mlp_shapes(spec: MlpSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """``flatten``, ``input_drop``, ``fc1``, ``relu1``, ``drop1``, ..., ``head``."""
    flat: Shape = (math.prod(input_shape),)
    shapes = {"flatten": flat} | ({"input_drop": flat} if spec.input_dropout else {})
    for i, width in enumerate(spec.hidden, start=1):
        shapes |= {f"fc{i}": (width,), f"relu{i}": (width,)}
        if spec.dropout:
            shapes[f"drop{i}"] = (width,)
    return shapes | {"head": (num_classes,)}


def mlp_cost(spec: MlpSpec, input_shape: Shape, shapes: Mapping[str, Shape]) -> Cost:
    widths = [math.prod(input_shape), *spec.hidden, shapes["head"][0]]
    return total(linear(a, b) for a, b in itertools.pairwise(widths))


MLP = register_family(
    Family(
        "mlp",
        spec=MlpSpec,
        shapes=mlp_shapes,
        build="kdcore.models.mlp:build_mlp",
        cost=mlp_cost,
    )
)
