"""Loading teacher and student weights without running code from the file.

Users send weights in one of four formats; :func:`detect_format` tells them apart by
content, not by extension:

``safetensors``
    Tensors only, by construction. Always accepted.
``state_dict``
    A ``{name: tensor}`` dict saved with ``torch.save`` (zip or legacy format), read with
    ``torch.load(weights_only=True)``: the restricted unpickler builds tensors and plain
    containers and refuses every other class, so a pickle that would import and call
    anything (``os.system``, a pickled ``nn.Module``) fails *before* it runs. We never
    retry with ``weights_only=False``.
``torchscript`` / ``export``
    Files from ``torch.jit.save`` and ``torch.export.save`` carry a program, not just
    tensors, and loading them can run code. They are refused unless the operator enables
    code checkpoints (``allow_code=True``, set by ``KDSERVE_ALLOW_CODE_CHECKPOINTS``).

Weights-only formats need an architecture spec: :func:`load_model` builds the model with
:func:`kdcore.models.build_model` and loads the tensors strictly, reporting every missing,
unexpected or mis-shaped name.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.export.unflatten import UnflattenedModule

from kdcore.contract import Spec
from kdcore.data import Normalizer
from kdcore.models import build_model

__all__ = [
    "CodeCheckpointRefused",
    "WeightFormat",
    "WeightsError",
    "detect_format",
    "freeze",
    "is_frozen",
    "is_program",
    "load_model",
    "load_state_dict",
    "load_weights_into",
]

WeightFormat = Literal["safetensors", "state_dict", "torchscript", "export"]

_ACCEPTED = (
    "accepted formats: safetensors (.safetensors), a state dict saved with "
    "torch.save(model.state_dict(), path) (.pt/.pth), and, only where the operator enables "
    "code checkpoints, TorchScript (torch.jit.save) or torch.export (.pt2) programs"
)
_SEND_INSTEAD = (
    'send the weights instead: torch.save(model.state_dict(), "teacher.pt") or '
    'safetensors.torch.save_file(model.state_dict(), "teacher.safetensors"), '
    "together with an architecture spec"
)
# Top-level keys under which common training scripts (and kdserve's own checkpoints,
# "student") nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "student")
_MAX_LISTED = 10
_KIND: dict[str, str] = {"torchscript": "TorchScript", "export": "torch.export (.pt2)"}
# safetensors itself refuses headers above 100 MB; a bigger length means "not safetensors".
_MAX_SAFETENSORS_HEADER = 100_000_000


class WeightsError(ValueError):
    """Unreadable or mismatched weights.

    The message says what to send instead, or which names and shapes are wrong.
    """


class CodeCheckpointRefused(WeightsError):
    """A TorchScript or torch.export file while code checkpoints are disabled."""


def detect_format(path: Path) -> WeightFormat:
    """The format of a weights file, judged by its content.

    Args:
        path: the file to look at.

    Returns:
        ``"safetensors"``, ``"state_dict"`` (a ``torch.save`` zip or a legacy pickle:
        :func:`load_state_dict` decides whether it really holds only tensors),
        ``"torchscript"`` or ``"export"``.

    Raises:
        WeightsError: the file is missing, truncated, or in no format listed above.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise WeightsError(f"weights file {path.name} is empty; {_ACCEPTED}")

    if head.startswith(b"PK\x03\x04"):
        return _zip_format(path)

    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if header_len <= _MAX_SAFETENSORS_HEADER:
            if header_len > size - 8:
                raise WeightsError(
                    f"{path.name} looks like safetensors but is truncated: its header alone "
                    f"should be {header_len} bytes and the file has {size}; upload it again"
                )
            return "safetensors"

    # Pickle protocol 2+ starts with PROTO (0x80) and the protocol number: a legacy
    # torch.save file or a bare pickle. The weights-only unpickler judges its content.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "state_dict"

    raise WeightsError(f"{path.name} is not a weights file kdserve can read; {_ACCEPTED}")


def _zip_format(path: Path) -> WeightFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(
            f"{path.name} is a zip archive (as torch.save writes) but is truncated or corrupt "
            f"({exc}); upload it again"
        ) from exc
    # Every entry sits under one top-level folder whose name torch picks from the file name.
    inner = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in inner or any(
        n.endswith("serialized_exported_program.json") or n.startswith("models/") for n in inner
    ):
        return "export"
    if "constants.pkl" in inner and any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        return "state_dict"
    raise WeightsError(f"{path.name} is a zip archive but not one torch writes; {_ACCEPTED}")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` dict from a safetensors or ``torch.save`` file.

    Besides a plain state dict, accepts one nested under ``"state_dict"``, ``"model"`` or
    ``"student"`` (kdserve's checkpoints), and strips the ``"module."`` prefix that
    ``DataParallel``/``DistributedDataParallel`` add when every key has it. Zip files are
    memory-mapped, so the returned tensors may share pages with the file until copied
    (e.g. by :func:`load_weights_into`).

    Args:
        path: a safetensors or ``torch.save`` file.

    Raises:
        CodeCheckpointRefused: the file is a TorchScript or torch.export program.
        WeightsError: the file is corrupt, holds pickled objects other than tensors (such
            as a whole model from ``torch.save(model)``), or holds no state dict.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("torchscript", "export"):
        raise CodeCheckpointRefused(
            f"{path.name} is a {_KIND[fmt]} program, not a state dict: it contains code and "
            f"can run commands when loaded; {_SEND_INSTEAD}"
        )
    if fmt == "safetensors":
        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise WeightsError(
                f"{path.name} is not a valid safetensors file ({exc}); it may be truncated: "
                "upload it again"
            ) from exc
        return _as_state_dict(obj, path)

    is_zip = zipfile.is_zipfile(path)
    try:
        # mmap avoids a second in-memory copy of big teachers; torch only supports it for
        # the zip format.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise WeightsError(_refused_pickle_message(path, exc)) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(
            f"{path.name} could not be read as a torch.save file ({_first_line(exc)}); it may "
            "be truncated or corrupt: upload it again"
        ) from exc
    return _as_state_dict(obj, path)


def _refused_pickle_message(path: Path, exc: Exception) -> str:
    found = re.search(r"GLOBAL (\S+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return (
        f"refused {path.name}: it holds pickled Python objects{what}, not only tensors. A "
        "pickled model object (torch.save(model)) can run code when it is loaded, so kdserve "
        f"never loads one; {_SEND_INSTEAD}"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = _unwrap(obj)
    if state is None:
        if isinstance(obj, dict):
            keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED])
            detail = f"a dict with keys {keys}"
        else:
            detail = f"a {type(obj).__name__}"
        raise WeightsError(
            f"{path.name} holds {detail}, not a state dict of tensors; expected "
            "{name: tensor}, optionally nested under "
            + ", ".join(repr(k) for k in _WRAPPER_KEYS)
            + f"; {_SEND_INSTEAD}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _unwrap(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict):
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    if depth < 2:
        for key in _WRAPPER_KEYS:
            found = _unwrap(obj.get(key), depth + 1)
            if found is not None:
                return found
    return None


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``, requiring the names and shapes to match exactly.

    Args:
        model: the architecture, e.g. from :func:`kdcore.models.build_model`.
        state: tensors by dotted name, e.g. from :func:`load_state_dict`.

    Raises:
        WeightsError: listing (the first few of) the shape mismatches, the names missing from
            the file and the names the architecture does not have, with their shapes.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    mismatched = [
        f"{k}: file {_shape(given[k])} vs architecture {_shape(s)}"
        for k, s in expected.items()
        if k in given and given[k] != s
    ]
    missing = [f"{k} {_shape(s)}" for k, s in expected.items() if k not in given]
    unexpected = [f"{k} {_shape(s)}" for k, s in given.items() if k not in expected]
    problems = [
        _listing(f"{len(mismatched)} with a different shape", mismatched),
        _listing(f"{len(missing)} missing from the file", missing),
        _listing(f"{len(unexpected)} in the file but not in the architecture", unexpected),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise WeightsError(
            "the weights do not fit the architecture: "
            + "; ".join(problems)
            + ". Check that the architecture spec, input shape and number of classes are the "
            "ones the weights were trained with"
        )
    model.load_state_dict(state, strict=True)


def _shape(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ",".join(str(d) for d in shape) + ")"


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title}: " + ", ".join(items[:_MAX_LISTED]) + more


def load_model(
    path: Path,
    spec: Spec | None,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    allow_code: bool = False,
) -> nn.Module:
    """Load a teacher (or student) model from a weights file.

    Weights-only files (safetensors, state dict) are loaded into ``build_model(spec, ...)``.
    Code checkpoints need ``allow_code=True`` and ignore ``spec``:

    - TorchScript: ``torch.jit.load``. Forward hooks cannot be registered on ScriptModules,
      so :class:`kdcore.hooks.FeatureTap` raises on them: such a teacher serves plain KD,
      not FitNets hints.
    - torch.export: ``torch.export.unflatten`` rebuilds the submodule tree, so every module
      keeps its dotted path and forward hooks on submodules fire, and hint layers are
      reachable (except modules that trace to no op, such as ``nn.Identity``: they never
      run, and ``FeatureTap`` says so). If unflattening fails we fall back to
      ``ExportedProgram.module()`` with a warning; that flat graph only keeps modules that
      own parameters, and their hooks never fire, so ``FeatureTap`` raises ``LayerNotFound``
      or "did not run". Programs must be exported with a dynamic batch dimension.

    Code checkpoints are run once on a zero batch of two samples to check they accept
    ``input_shape`` and return ``num_classes`` logits.

    Args:
        path: the weights file.
        spec: the parsed architecture spec, for weights-only files.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        num_classes: number of logits the model must return.
        allow_code: accept TorchScript and torch.export files, which can run code on load.

    Returns:
        The model on CPU, not yet frozen (see :func:`freeze`).

    Raises:
        CodeCheckpointRefused: a code checkpoint while ``allow_code`` is false.
        WeightsError: unreadable file, no spec for weights-only files, or weights / program
            that do not fit the architecture, input shape or class count.
        kdcore.contract.SpecError: an invalid spec.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("safetensors", "state_dict"):
        if spec is None:
            raise WeightsError(
                f"{path.name} holds weights only; send the architecture spec with the weights "
                '(e.g. {"family": "resnet", "depth": 20}) so kdserve can build the model'
            )
        model = build_model(spec, input_shape, num_classes)
        load_weights_into(model, load_state_dict(path))
        return model

    if not allow_code:
        raise CodeCheckpointRefused(
            f"{path.name} is a {_KIND[fmt]} program: it contains code and can run commands when "
            "loaded. The operator must enable code checkpoints (KDSERVE_ALLOW_CODE_CHECKPOINTS) "
            "or you can send safetensors / a state dict plus an architecture spec"
        )
    model, raw = _load_torchscript(path) if fmt == "torchscript" else _load_exported(path)
    if raw:
        model = RawInputProgram(model)
    _check_outputs(model, path, input_shape, num_classes)
    return model


# Written by kdcore.export into its TorchScript and .pt2 files: the program normalizes its
# input itself (it holds the student.json preprocessing), so it takes raw samples.
RAW_INPUT_MARK = "kdserve-raw-input.json"


class RawInputProgram(nn.Module):
    """A code checkpoint that preprocesses its own input, as kdserve's own graph exports do.

    It takes raw samples (as the dataset stores them, as floats), while kdcore feeds a
    teacher normalized ones: :meth:`fed_normalized` gives the teacher as training calls it,
    mapping the batch back with the job's :class:`~kdcore.data.Normalizer`, so teacher and
    student still see the same (augmented) pixels.
    """

    def __init__(self, program: nn.Module, normalizer: Normalizer | None = None) -> None:
        super().__init__()
        self.program = program
        self.normalizer = normalizer

    def fed_normalized(self, normalizer: Normalizer) -> RawInputProgram:
        """The same program on normalized batches; frozen like this one."""
        fed = RawInputProgram(self.program, normalizer)
        fed.training = self.training  # not .train(): torch.export graphs refuse it
        return fed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalizer is not None:
            x = self.normalizer.invert(x)  # (B, ...) raw values
        out: torch.Tensor = self.program(x)
        return out


def is_program(model: nn.Module) -> bool:
    """Whether ``model`` came from a code checkpoint (TorchScript, torch.export) rather than
    kdcore's own builders: kdcore runs such a program as it is and never rewrites it (no
    layout change, no layer folding)."""
    programs = (torch.jit.ScriptModule, torch.fx.GraphModule, UnflattenedModule, RawInputProgram)
    return isinstance(model, programs)


def _load_torchscript(path: Path) -> tuple[nn.Module, bool]:
    extra = {RAW_INPUT_MARK: ""}
    try:
        module: nn.Module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path.name} could not be loaded as TorchScript ({_first_line(exc)}); it may be "
            "truncated or saved by a newer torch: upload it again"
        ) from exc
    return module, bool(extra[RAW_INPUT_MARK])


def _load_exported(path: Path) -> tuple[nn.Module, bool]:
    extra = {RAW_INPUT_MARK: ""}
    try:
        # A file object, not the path: torch warns about (and takes another code path for)
        # names that do not end in .pt2, and uploads get arbitrary names.
        with path.open("rb") as f:
            program = torch.export.load(f, extra_files=extra)
    except Exception as exc:  # the file runs its own code here: it can raise anything
        if isinstance(exc, MemoryError):
            raise
        raise WeightsError(
            f"{path.name} could not be loaded as a torch.export program ({_first_line(exc)}); "
            "it may be truncated or saved by an incompatible torch: upload it again"
        ) from exc
    raw = bool(extra[RAW_INPUT_MARK])
    try:
        return torch.export.unflatten(program), raw
    except Exception as exc:  # any failure here has the same fallback
        warnings.warn(
            f"could not unflatten {path.name} ({_first_line(exc)}); using the flat graph, "
            "where middle layers cannot be hooked: FitNets hints on this teacher will fail",
            stacklevel=3,
        )
        return program.module(), raw


def _check_outputs(
    model: nn.Module, path: Path, input_shape: tuple[int, ...], num_classes: int
) -> None:
    x = torch.zeros(2, *input_shape)  # (B, *input_shape)
    was_training = model.training
    _set_eval(model)  # a scripted BatchNorm in train mode would update its running stats
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a program raises whatever its ops raise
        raise WeightsError(
            f"{path.name} does not run on a batch of shape {tuple(x.shape)} "
            f"({_first_line(exc)}); check the input shape, and export with a dynamic batch "
            "dimension"
        ) from exc
    finally:
        if was_training:
            _set_train(model)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise WeightsError(
            f"{path.name} returns {got} for a batch of 2 inputs of shape {tuple(input_shape)}, "
            f"but the data has {num_classes} classes: it must return logits of shape "
            f"(batch, {num_classes})"
        )


def _set_eval(model: nn.Module) -> None:
    try:
        model.eval()
    except NotImplementedError:
        # ExportedProgram.module() refuses train()/eval(); its graph already has the
        # mode it was exported in, so only the flags need to agree.
        for m in model.modules():
            m.training = False


def _set_train(model: nn.Module) -> None:
    try:
        model.train()
    except NotImplementedError:
        for m in model.modules():
            m.training = True


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with no parameter requiring grad, as a teacher must be.

    The one way kdcore freezes a teacher: :func:`kdcore.train.train` checks it with
    :func:`is_frozen` and freezes nothing itself. Works on every model :func:`load_model`
    returns, including ScriptModules, which refuse ``requires_grad_()`` (each parameter is
    frozen instead), and ``ExportedProgram.module()`` graphs, which refuse ``eval()`` (each
    module's flag is set instead).

    Args:
        model: any model from :func:`load_model`.

    Returns:
        The same model, for chaining.
    """
    _set_eval(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_frozen(model: nn.Module) -> bool:
    """Whether ``model`` is as :func:`freeze` leaves it: every module in eval mode, and no
    parameter requiring grad."""
    return not any(m.training for m in model.modules()) and not any(
        p.requires_grad for p in model.parameters()
    )
