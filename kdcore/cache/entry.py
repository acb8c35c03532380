"""A cache entry: a teacher's outputs on every view of a :class:`~kdcore.data.ViewBank`:
its logits (the KD stage), or the map of a hint layer (FitNets stage 1).

File format: one safetensors file, read in one sequential pass (never one file per sample:
torchdistill dropped its per-sample cache because small reads were slower than decoding).

=========  ===========  =================================================================
tensor     dtype        shape and meaning
=========  ===========  =================================================================
values     float16      ``(N, K, ...)``: the teacher's output for sample and view: logits
                        ``(N, K, C)``, or a hint map ``(N, K, C_h, H_h, W_h)``
views      int16        ``(N, K, 3)``: each view's ``(row, col, flip)``
start      int64        ``(N,)``: the view each sample shows in epoch 1
=========  ===========  =================================================================

String metadata: ``format`` (``kdcore-teacher-cache``), ``version``, ``key`` (the entry's
name), ``inputs`` (the :class:`~kdcore.cache.key.CacheKey` as JSON, for people and the
service's listing), ``policy`` (the :class:`~kdcore.data.ViewPolicy` as JSON) and
``sha256``: a sha256 over the tensors in name order (each name, dtype, shape and raw bytes).
:func:`load_outputs` recomputes it on every read and refuses the entry
(:class:`CorruptEntry`) when it, the format, the key or the shapes disagree, or when the
file does not parse (truncated). The hash sits inside the file, so an entry is one object
to copy, upload and rename atomically.

Precision: the teacher runs under the config's autocast (``precision``) and its logits are
stored as float16 (11 significant bits: a relative step of 2^-11 ≈ 5e-4 per logit).
Measured on the tiny CNN teacher of ``tests/kdcore`` trained 3 epochs (logits within ±3.8),
a 1-epoch student, 4 views of 64 samples: the largest logit change is 1.1e-3 and the largest
change of the batch KD loss 6.9e-6 at T = 1, 7.5e-5 at T = 4 (loss 0.96, relative 8e-5) and
6.4e-5 at T = 20; the T² factor of the loss makes T = 4 the worst of the three.
``tests/kdcore/cache/test_entry_store.py`` checks it stays below 5e-4 relative.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch

from kdcore.cache.key import CACHE_FORMAT_VERSION
from kdcore.data import Normalizer, ViewBank, ViewPolicy
from kdcore.runtime import Runtime

__all__ = [
    "FORMAT",
    "CorruptEntry",
    "TeacherOutputs",
    "Uncacheable",
    "compute_outputs",
    "load_outputs",
    "save_outputs",
]

FORMAT = "kdcore-teacher-cache"
# Samples per teacher call while building. Larger is not faster on a CPU: ResNet-20 in
# inference mode on this project's 2-core EPYC ran 801 samples/s at 128 and 441 at 512 (the
# activations of a large batch fall out of cache); a GPU wants large batches.
BUILD_BATCH = {"cpu": 128, "cuda": 1024}
_FP16_MAX = float(torch.finfo(torch.float16).max)


class Uncacheable(ValueError):
    """The teacher's outputs cannot be stored (not finite, beyond float16's range, or a hint
    map over the memory budget): the run keeps the teacher in the loop instead
    (:func:`kdcore.train.train`)."""


class CorruptEntry(Exception):
    """A cache entry that must not be used (tampered, truncated, or not what its key says)."""


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's outputs (logits, or a hint layer's maps) on each view of a bank.

    Attributes:
        values: ``(N, K, ...)`` float16.
        bank: the views (``K`` per sample) and each epoch's choice among them.
    """

    values: torch.Tensor
    bank: ViewBank

    def to(self, device: torch.device) -> TeacherOutputs:
        return TeacherOutputs(self.values.to(device), self.bank.to(device))

    def lookup(self, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` float32 outputs of view ``view[j]`` of sample ``idx[j]``."""
        return self.values[idx, view].float()


def compute_outputs(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    normalizer: Normalizer,
    bank: ViewBank,
    *,
    runtime: Runtime,
) -> TeacherOutputs:
    """Run the frozen teacher once on every view, in inference mode and large batches.

    Args:
        teacher: a normalized batch to the teacher's output for it (its logits, or a hint
            layer's map), frozen, on ``x``'s device.
        x: ``(N, ...)`` raw training samples.
        normalizer: the training normalizer.
        bank: the views (its tensors on the CPU or ``x``'s device).
        runtime: the run's precision (the teacher runs under its autocast, as it would in
            the loop) and memory format.

    Raises:
        Uncacheable: an output does not fit in float16.
    """
    n, k = len(x), bank.views
    step = BUILD_BATCH.get(x.device.type, BUILD_BATCH["cpu"])
    bank = bank.to(x.device)
    chunks: list[torch.Tensor] = []
    with torch.inference_mode():
        for i in range(0, n, step):
            idx = torch.arange(i, min(i + step, n), device=x.device)  # (B,)
            xb = normalizer(x[idx])  # (B, ...) float32
            per_view = []
            for v in range(k):
                view = torch.full_like(idx, v)
                with runtime.autocast():
                    out = teacher(runtime.batch(bank.apply(xb, idx, view))).float()  # (B, ...)
                if not torch.isfinite(out).all() or out.abs().max() > _FP16_MAX:
                    raise Uncacheable(
                        "the teacher's outputs are not finite or too large for float16 storage"
                    )
                per_view.append(out.half().contiguous())  # stored precision at once
            chunks.append(torch.stack(per_view, 1).cpu())  # (B, K, ...)
    return TeacherOutputs(torch.cat(chunks), bank.to(torch.device("cpu")))


def _tensors(outputs: TeacherOutputs) -> dict[str, torch.Tensor]:
    return {
        "values": outputs.values.cpu().contiguous(),
        "views": outputs.bank.params.cpu().contiguous(),
        "start": outputs.bank.start.cpu().contiguous(),
    }


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def save_outputs(path: Path, outputs: TeacherOutputs, *, key: str, inputs: str) -> None:
    """Write ``outputs`` to ``path`` as one safetensors file (see the module docstring).

    Args:
        path: where to write (a temporary name: publishing is the store's job).
        outputs: what to store.
        key: the entry's key.
        inputs: the key's inputs as JSON (:meth:`CacheKey.canonical_json`).
    """
    tensors = _tensors(outputs)
    meta = {
        "format": FORMAT,
        "version": str(CACHE_FORMAT_VERSION),
        "key": key,
        "inputs": inputs,
        "policy": json.dumps(asdict(outputs.bank.policy), sort_keys=True),
        "sha256": tensors_sha256(tensors),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def load_outputs(path: Path, *, key: str, shape: tuple[int, ...]) -> TeacherOutputs:
    """Read and verify an entry in one sequential read.

    Args:
        path: the entry's file.
        key: the key it must carry.
        shape: the ``(N, K, ...)`` values the caller needs.

    Raises:
        CorruptEntry: the file does not parse, its hash, format, key or shapes disagree.
    """
    try:
        raw = path.read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
        tensors = safetensors.torch.load(raw)
        policy = ViewPolicy(**json.loads(meta["policy"]))
    except Exception as exc:  # any parse failure (truncation, garbage) means: do not use it
        raise CorruptEntry(f"cache entry {path.name} does not parse: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("version") != str(CACHE_FORMAT_VERSION):
        raise CorruptEntry(f"cache entry {path.name} has another format or version")
    if meta.get("key") != key:
        raise CorruptEntry(f"cache entry {path.name} carries another key")
    if set(tensors) != {"values", "views", "start"} or meta.get("sha256") != tensors_sha256(
        tensors
    ):
        raise CorruptEntry(f"cache entry {path.name} fails its sha256 check")
    values, views, start = tensors["values"], tensors["views"], tensors["start"]
    n, k = shape[:2]
    if (
        values.shape != shape
        or values.dtype != torch.float16
        or views.shape != (n, k, 3)
        or start.shape != (n,)
    ):
        raise CorruptEntry(
            f"cache entry {path.name} holds values {tuple(values.shape)}, expected {shape}"
        )
    return TeacherOutputs(values, ViewBank(policy, views, start))
