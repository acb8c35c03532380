"""Per-layer output shapes of a student spec, worked out without torch.

Job submission uses them to refuse, with a 422, a student that cannot take the dataset's
input shape and a FitNets guided layer that no regressor can join to the teacher's hint
layer. They mirror ``kdcore.models`` (convolution and pooling arithmetic) and the rules of
``kdcore.regressor.build_regressor``; ``tests/api/test_shapes.py`` checks them against the
built models. Families whose shapes are not mirrored here (``resnet``, ``wrn``) get only the
input-rank check; the worker still checks everything when it builds the model.
"""

from __future__ import annotations

import math

from kdcore import specs as s
from kdcore.specs import CnnSpec, MlpSpec, SpecError

Shape = tuple[int, ...]


def student_shapes(spec: object, input_shape: Shape, num_classes: int) -> dict[str, Shape] | None:
    """Every layer path's per-sample output shape, or None for families not mirrored here.

    Raises:
        SpecError: the student cannot take ``input_shape`` or does not end in
            ``num_classes`` logits; the message names the layer and what to change.
    """
    match spec:
        case CnnSpec():
            return _cnn(spec, input_shape, num_classes)
        case MlpSpec():
            return _mlp(spec, input_shape, num_classes)
    if len(input_shape) != 3:
        raise SpecError(
            f"family {getattr(spec, 'family', '?')!r} needs image input (C, H, W), but the "
            f"data has shape {input_shape}; use the mlp family for vectors"
        )
    return None


def regressor_problem(guided: Shape, hint: Shape) -> str | None:
    """Why no FitNets regressor joins ``guided`` to ``hint``, or None when one does."""
    if len(guided) == 1 and len(hint) == 1:
        return None
    if len(guided) == 3 and len(hint) == 3:
        pairs = list(zip(guided[1:], hint[1:], strict=True))
        if all(g >= h for g, h in pairs) or all(g <= h for g, h in pairs):
            return None
        return (
            f"guided map {guided} is larger than hint map {hint} in one direction and smaller "
            "in the other; pick layers whose spatial sizes compare the same way in both"
        )
    if {len(guided), len(hint)} == {1, 3}:
        return (
            f"cannot regress guided shape {guided} onto hint shape {hint}: pick two image "
            "layers (C, H, W) or two vector layers (F,), e.g. both before or both after the "
            f"flatten (hint has {math.prod(hint)} values)"
        )
    return f"unsupported layer shapes: guided {guided}, hint {hint}"


def _mlp(spec: MlpSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    flat: Shape = (math.prod(input_shape),)
    shapes = {"flatten": flat} | ({"input_drop": flat} if spec.input_dropout else {})
    for i, width in enumerate(spec.hidden, start=1):
        shapes |= {f"fc{i}": (width,), f"relu{i}": (width,)}
        if spec.dropout:
            shapes[f"drop{i}"] = (width,)
    return shapes | {"head": (num_classes,)}


def _cnn(spec: CnnSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    shape = tuple(input_shape)
    for i, layer in enumerate(spec.layers):
        name = layer.name or str(i)
        where = f"layer {i} ({name!r}, {layer.type})"
        match layer:
            case s.ConvLayer() | s.MaxoutConvLayer():
                _image(shape, where)
                spatial = _window(shape, layer.k, layer.stride, layer.pad, where)
                if isinstance(layer, s.MaxoutConvLayer):
                    shapes[f"{name}.conv"] = (layer.out * layer.pieces, *spatial)
                shape = (layer.out, *spatial)
            case s.PoolLayer():
                _image(shape, where)
                if 2 * layer.pad > layer.k:
                    raise SpecError(f"{where}: pad {layer.pad} is over half the kernel {layer.k}")
                shape = (
                    shape[0],
                    *_window(shape, layer.k, layer.stride or layer.k, layer.pad, where),
                )
            case s.GlobalAvgPoolLayer():
                _image(shape, where)
                shapes[f"{name}.0"] = (shape[0], 1, 1)
                shape = (shape[0],)
                shapes[f"{name}.1"] = shape
            case s.FlattenLayer():
                shape = (math.prod(shape),)
            case s.LinearLayer() | s.MaxoutLinearLayer():
                _vector(shape, where)
                out = layer.out or num_classes
                if isinstance(layer, s.MaxoutLinearLayer):
                    shapes[f"{name}.linear"] = (out * layer.pieces,)
                shape = (out,)
            case _:  # batchnorm, relu, dropout keep the shape
                pass
        shapes[name] = shape
    if shape != (num_classes,):
        raise SpecError(
            f"the last layer outputs shape {shape}, but the data has {num_classes} "
            'classes: end the stack with {"type": "flatten"} (if needed) and {"type": "linear"}'
        )
    return shapes


def _image(shape: Shape, where: str) -> None:
    if len(shape) != 3:
        raise SpecError(f"{where} needs an image input (C, H, W), but receives shape {shape}")


def _vector(shape: Shape, where: str) -> None:
    if len(shape) != 1:
        raise SpecError(
            f'{where} needs a vector input, but receives shape {shape}: put {{"type": '
            '"flatten"} before it'
        )


def _window(shape: Shape, k: int, stride: int, pad: int, where: str) -> tuple[int, int]:
    """Output height and width of a ``k``×``k`` window (convolution or pooling)."""
    h, w = (size + 2 * pad for size in shape[1:])
    if k > min(h, w):
        raise SpecError(
            f"{where} cannot take input shape {shape}: its {k}x{k} window is larger than the "
            f"padded input {h}x{w}; use a smaller kernel, more padding or fewer downsampling "
            "layers before it"
        )
    return (h - k) // stride + 1, (w - k) // stride + 1
