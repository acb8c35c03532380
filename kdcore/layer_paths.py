"""Layer paths from a spec alone, without building the model (and without torch).

The service checks hint and guided layer paths when a job is submitted, in a process that
does not import torch. These functions mirror the model builders; a test checks that they
equal ``named_modules()`` of the built model for every family.
"""

from __future__ import annotations

import difflib
from typing import Any

from kdcore.specs import CnnSpec, MlpSpec, ResNetSpec, WrnSpec, parse_arch


def layer_paths(spec: Any) -> list[str]:
    """Every module's dotted path, in ``named_modules()`` order (the root excluded)."""
    if isinstance(spec, dict | str | bytes):
        spec = parse_arch(spec)
    match spec:
        case CnnSpec():
            return _cnn(spec)
        case MlpSpec():
            return _mlp(spec)
        case ResNetSpec():
            return _residual(spec.depth, projection=True, wide=False)
        case WrnSpec():
            return _residual(spec.depth, projection=True, wide=True, width=spec.width)
    raise ValueError(f"no layer paths for family {getattr(spec, 'family', spec)!r}")


def describe_missing_layer(path: str, valid: list[str]) -> str:
    """A message naming the nearest valid paths to ``path``."""
    near = difflib.get_close_matches(path, valid, n=5, cutoff=0.4) or valid[:5]
    return f"no layer {path!r}; nearest valid paths: {', '.join(near)} ({len(valid)} in all)"


def _cnn(spec: CnnSpec) -> list[str]:
    paths = []
    for i, layer in enumerate(spec.layers):
        name = layer.name or str(i)
        paths.append(name)
        if layer.type == "maxout_conv":
            paths.append(f"{name}.conv")
        elif layer.type == "maxout_linear":
            paths.append(f"{name}.linear")
        elif layer.type == "global_avgpool":
            paths += [f"{name}.0", f"{name}.1"]
    return paths


def _mlp(spec: MlpSpec) -> list[str]:
    paths = ["flatten"] + (["input_drop"] if spec.input_dropout else [])
    for i in range(1, len(spec.hidden) + 1):
        paths += [f"fc{i}", f"relu{i}"] + ([f"drop{i}"] if spec.dropout else [])
    return paths + ["head"]


def _residual(depth: int, *, projection: bool, wide: bool, width: int = 1) -> list[str]:
    n = (depth - 4) // 6 if wide else (depth - 2) // 6
    if wide:
        paths, stage, block = (
            ["conv1"],
            "block",
            ["bn1", "relu1", "conv1", "bn2", "relu2", "dropout", "conv2"],
        )
        in_ch, widths = 16, [16 * width, 32 * width, 64 * width]
    else:
        paths, stage, block = (
            ["conv1", "bn1", "relu"],
            "layer",
            ["conv1", "bn1", "relu1", "conv2", "bn2"],
        )
        in_ch, widths = 16, [16, 32, 64]  # width scales all stages alike: same projections
    for s, w in enumerate(widths, start=1):
        paths.append(f"{stage}{s}")
        for j in range(n):
            prefix = f"{stage}{s}.{j}"
            paths.append(prefix)
            paths += [f"{prefix}.{m}" for m in block]
            paths.append(f"{prefix}.shortcut")
            project = j == 0 and (s > 1 or in_ch != w)
            if project and not wide:
                paths += [f"{prefix}.shortcut.0", f"{prefix}.shortcut.1"]
            if not wide:
                paths.append(f"{prefix}.relu2")
        in_ch = w
    tail = ["bn", "relu"] if wide else []
    return paths + tail + ["pool", "flatten", "fc"]
