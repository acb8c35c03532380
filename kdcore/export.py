"""Exporting a trained student, and loading it back.

An export folder holds:

``student.json``
    :class:`StudentMeta` (architecture spec, input shape, classes, preprocessing) plus
    ``format_version``; written last, so its presence means the export finished.
``student.safetensors``
    The bare model's weights; with ``student.json`` this is the safe way to reload
    (:func:`load_student`).
``student.torchscript.pt`` / ``student.pt2`` / ``student.onnx``
    Self-contained programs for serving without kdserve. They take a *raw* float batch
    ``(B, *input_shape)`` on the data's own scale (0..255 for 8-bit images) and apply the
    preprocessing themselves (:class:`Preprocessed`); the batch dimension is dynamic.

Every file is written under a temporary name in the folder and renamed into place
(:func:`kdcore.files.atomic_write`), so a half-written file never carries a final name; each
program is reloaded and checked against the PyTorch model before it is renamed.

The preprocessing is a :class:`kdcore.data.Normalizer`: ``student.json`` holds its dict, and
:class:`Preprocessed` applies its tensors with its arithmetic, so the programs normalize
exactly as training and evaluation did.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kdcore.contract import Spec, parse_arch
from kdcore.data.normalizer import Normalizer, normalize
from kdcore.files import atomic_write
from kdcore.models import build_model
from kdcore.weights import RAW_INPUT_MARK, WeightsError, load_state_dict, load_weights_into

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "Preprocessed",
    "StudentMeta",
    "export_student",
    "load_student",
]

FORMAT_VERSION = 1
FORMATS = ("safetensors", "torchscript", "pt2", "onnx")
# The weights are the export; the programs are conveniences: one that cannot be made is left
# out with a warning instead of failing the export.
REQUIRED_FORMATS = ("safetensors",)
_MAX_WARNING_CHARS = 600
META_FILE = "student.json"
_FILES = {
    "safetensors": "student.safetensors",
    "torchscript": "student.torchscript.pt",
    "pt2": "student.pt2",
    "onnx": "student.onnx",
}
_HOW_TO_LOAD = (
    "kdcore.export.load_student(folder) rebuilds the model from 'spec' and "
    "student.safetensors; it expects ((x * scale) - mean) / std. student.torchscript.pt "
    "(torch.jit.load), student.pt2 (torch.export.load(...).module()) and student.onnx take "
    "the raw float batch (B, *input_shape) and normalize it themselves."
)
# Relative and absolute tolerance between an exported program and the PyTorch model.
_TOLERANCE = 1e-4
# What a student.json without (some of) "preprocess" means: the raw input as it is.
_NO_PREPROCESSING = Normalizer(scale=1.0, mean=[0.0], std=[1.0]).to_dict()


@dataclass(frozen=True)
class StudentMeta:
    """What ``student.json`` holds: everything needed to rebuild and feed the student.

    The model expects ``((x * scale) - mean) / std`` where ``x`` is the raw sample:
    ``preprocess`` is a :class:`~kdcore.data.Normalizer`'s dict (:attr:`normalizer`), whose
    ``mean`` and ``std`` hold one value (broadcast everywhere) or one per channel (the
    first dimension of ``input_shape``: ``(C, 1, 1)`` for images, per feature for vectors).

    The constructor validates and canonicalizes: ``preprocess`` is checked as a
    normalizer for ``input_shape`` and gets all three keys (defaults ``scale=1``,
    ``mean=[0]``, ``std=[1]``).

    Attributes:
        spec: the student's architecture spec (parsed from ``student.json`` once, on reading).
        input_shape: one raw sample's shape, e.g. ``[3, 32, 32]``.
        num_classes: number of logits.
        classes: class names, in logit order.
        preprocess: ``{"scale": float, "mean": [float, ...], "std": [float, ...]}``.
    """

    spec: Spec
    input_shape: list[int]
    num_classes: int
    classes: list[str]
    preprocess: dict[str, Any]

    def __post_init__(self) -> None:
        # Frozen dataclass: canonical values go in through object.__setattr__.
        shape = [int(d) for d in self.input_shape]
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape must be positive sizes such as [3, 32, 32], got {shape}")
        object.__setattr__(self, "input_shape", shape)
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"got {len(self.classes)} class names for {self.num_classes} classes; give "
                "one name per logit"
            )
        object.__setattr__(self, "classes", [str(c) for c in self.classes])
        object.__setattr__(self, "preprocess", _canonical_preprocess(self.preprocess, shape))

    @property
    def normalizer(self) -> Normalizer:
        """The preprocessing the model expects."""
        return Normalizer.from_dict(self.preprocess)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object written to ``student.json`` (without ``format_version``)."""
        spec = self.spec.model_dump(mode="json", exclude_none=True)
        return {**asdict(self), "spec": spec}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> StudentMeta:
        """Read :meth:`to_json_dict` output (extra keys such as ``format_version`` ignored)."""
        try:
            return cls(
                spec=parse_arch(data["spec"]),
                input_shape=data["input_shape"],
                num_classes=data["num_classes"],
                classes=data["classes"],
                preprocess=data.get("preprocess", {}),
            )
        except KeyError as exc:
            raise ValueError(f"student metadata lacks the {exc.args[0]!r} field") from exc


def _canonical_preprocess(pre: dict[str, Any], input_shape: list[int]) -> dict[str, Any]:
    normalizer = Normalizer.from_dict({**_NO_PREPROCESSING, **pre})
    normalizer.stats(input_shape)  # refuses values per channel that input_shape lacks
    return normalizer.to_dict()


class Preprocessed(nn.Module):
    """A model that takes raw input: ``model(((x * scale) - mean) / std)``.

    Built from a :class:`~kdcore.data.Normalizer`: ``mean`` and ``std`` are its
    :meth:`~kdcore.data.Normalizer.stats` as buffers (a scalar, or ``(C, 1, ..., 1)`` with
    one value per channel of ``input_shape``), applied with the same
    :func:`~kdcore.data.normalize`.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, model: nn.Module, normalizer: Normalizer, *, input_shape: Sequence[int]
    ) -> None:
        super().__init__()
        self.model = model
        self.scale = float(normalizer.scale)
        mean, std = normalizer.stats(input_shape)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def from_meta(cls, model: nn.Module, meta: StudentMeta) -> Preprocessed:
        """Wrap ``model`` with the preprocessing ``meta`` describes."""
        return cls(model, meta.normalizer, input_shape=meta.input_shape)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input for raw ``x``: ``((x * scale) - mean) / std``."""
        return normalize(x, self.scale, self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))  # (B, num_classes)


def export_student(
    model: nn.Module,
    meta: StudentMeta,
    out_dir: Path,
    *,
    formats: Sequence[str] = FORMATS,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the student to ``out_dir`` in the given formats, plus ``student.json``.

    The caller's model is left as it is: the export rebuilds ``meta.spec`` on CPU and loads a
    copy of the weights into it strictly, which also proves that ``student.json`` describes
    these weights. safetensors cannot store tensors that share memory, so a tied tensor is
    stored under each of its names (the rebuilt model ties them again). ONNX is written as one
    file (no external data), so students must stay under protobuf's 2 GB. Files of formats not
    exported this time are left alone; ``student.json``'s ``"files"`` lists this export's.

    ``"onnx"`` needs the optional extra (``pip install 'kdserve[onnx]'``); without it the
    format is skipped with a warning and left out of the result. The programs
    (``"torchscript"``, ``"pt2"``, ``"onnx"``) are optional in the same way: one whose export
    fails or does not reproduce the model (a very wide output layer can miss the tolerance,
    a large model ONNX's 2 GB) is left out with a warning that says why, any older file of
    that format in ``out_dir`` is removed, and the rest of the export goes on.

    Args:
        model: the trained student (any device or mode).
        meta: its metadata; ``meta.spec`` must describe ``model``.
        out_dir: the folder to write to (created if needed; existing files are replaced).
        formats: any of ``"safetensors"``, ``"torchscript"``, ``"pt2"``, ``"onnx"``.
        warn: called with the message of each format left out (default:
            :func:`warnings.warn`).

    Returns:
        The written files by format, plus ``"meta"`` for ``student.json``.

    Raises:
        ValueError: an unknown format.
        WeightsError: ``model``'s weights do not fit ``meta.spec``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export formats {unknown}; valid: {', '.join(FORMATS)}")
    wanted = [f for f in FORMATS if f in formats]
    say = warn or (lambda message: warnings.warn(message, stacklevel=3))
    if "onnx" in wanted and not _onnx_available():
        say(
            "skipping the ONNX export: onnx, onnxruntime and onnxscript are not installed; "
            "install them with pip install 'kdserve[onnx]'"
        )
        wanted.remove("onnx")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bare = build_model(meta.spec, tuple(meta.input_shape), meta.num_classes)
    load_weights_into(bare, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    bare.eval().requires_grad_(False)
    wrapped = Preprocessed.from_meta(bare, meta).eval()

    written: dict[str, Path] = {}
    for fmt in wanted:
        path = out_dir / _FILES[fmt]
        try:
            with atomic_write(path) as tmp:
                _WRITERS[fmt](bare, wrapped, meta, tmp)
        except Exception as exc:
            if fmt in REQUIRED_FORMATS:
                raise
            path.unlink(missing_ok=True)  # an older export's file would not match this one
            reason = f"{type(exc).__name__}: {exc}"
            if len(reason) > _MAX_WARNING_CHARS:
                reason = reason[:_MAX_WARNING_CHARS] + "..."
            say(f"the {fmt} export was left out, it failed: {reason}")
            continue
        written[fmt] = path

    doc = {"format_version": FORMAT_VERSION, **meta.to_json_dict()}
    doc["files"] = {fmt: p.name for fmt, p in written.items()}
    doc["how_to_load"] = _HOW_TO_LOAD
    meta_path = out_dir / META_FILE
    with atomic_write(meta_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    written["meta"] = meta_path
    return written


def load_student(out_dir: Path) -> tuple[nn.Module, StudentMeta]:
    """Rebuild an exported student from ``student.json`` and ``student.safetensors``.

    No code from the folder runs: the model is built from the spec and gets the tensors.

    Args:
        out_dir: a folder written by :func:`export_student` with the safetensors format.

    Returns:
        The model in eval mode on CPU (it expects normalized input, see
        :class:`Preprocessed`) and its metadata.

    Raises:
        WeightsError: a missing or unreadable file, or weights that do not fit the spec.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / META_FILE
    try:
        doc = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(
            f"{out_dir} has no {META_FILE}: it is not a folder written by export_student"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {meta_path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise WeightsError(f"{meta_path} must hold a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{meta_path} has format_version {version!r}; this kdserve reads version "
            f"{FORMAT_VERSION}: upgrade kdserve or export the student again"
        )
    try:
        meta = StudentMeta.from_json_dict(doc)
    except ValueError as exc:
        raise WeightsError(f"{meta_path} is invalid: {exc}") from exc
    weights = out_dir / _FILES["safetensors"]
    if not weights.exists():
        raise WeightsError(
            f"{out_dir} has no {weights.name}: export the student with the 'safetensors' format"
        )
    model = build_model(meta.spec, tuple(meta.input_shape), meta.num_classes)
    load_weights_into(model, load_state_dict(weights))
    return model.eval(), meta


# --- writers -------------------------------------------------------------------------------


def _write_safetensors(bare: nn.Module, _w: Preprocessed, _m: StudentMeta, path: Path) -> None:
    # safetensors refuses tensors that share storage or are not contiguous: store clones.
    state = {k: v.detach().contiguous().clone() for k, v in bare.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _write_torchscript(_b: nn.Module, wrapped: Preprocessed, meta: StudentMeta, path: Path) -> None:
    example = _raw_batch(meta, 2)
    with torch.no_grad():
        # Tracing is checked below by reloading the file on another batch size.
        traced = torch.jit.trace(wrapped, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={RAW_INPUT_MARK: json.dumps(meta.preprocess)})
    _verify("TorchScript", wrapped, meta, torch.jit.load(str(path), map_location="cpu"))


def _write_pt2(_b: nn.Module, wrapped: Preprocessed, meta: StudentMeta, path: Path) -> None:
    example = _raw_batch(meta, 2)  # not 1: torch.export specializes sizes 0 and 1
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path, extra_files={RAW_INPUT_MARK: json.dumps(meta.preprocess)})
    _verify("torch.export", wrapped, meta, torch.export.load(path).module())


def _write_onnx(_b: nn.Module, wrapped: Preprocessed, meta: StudentMeta, path: Path) -> None:
    import onnxruntime  # the optional extra, checked by _onnx_available

    example = _raw_batch(meta, 2)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs one line per torchvision op it cannot register; kdserve uses none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        external_data=False,  # one self-contained file, renamed atomically
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    _verify("ONNX", wrapped, meta, run)


_WRITERS = {
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "pt2": _write_pt2,
    "onnx": _write_onnx,
}


def _onnx_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


def _raw_batch(meta: StudentMeta, n: int) -> torch.Tensor:
    """A fixed random batch on the raw scale (0..1/scale), e.g. 0..255 for images."""
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, *meta.input_shape, generator=g)  # (B, *input_shape)
    return x / meta.preprocess["scale"]


def _verify(name: str, wrapped: Preprocessed, meta: StudentMeta, program: Any) -> None:
    # Batch 3 differs from the export example, so a baked-in batch size shows up here.
    x = _raw_batch(meta, 3)
    with torch.no_grad():
        want = wrapped(x)
        got = program(x)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=_TOLERANCE, atol=_TOLERANCE):
        diff = (
            f"max abs difference {(got - want).abs().max().item():.3g}"
            if got.shape == want.shape
            else f"shape {tuple(got.shape)} vs {tuple(want.shape)}"
        )
        raise RuntimeError(
            f"the {name} export does not reproduce the PyTorch model ({diff}); it was not "
            "written. Export without this format, or report the architecture"
        )
