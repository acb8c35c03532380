"""A cache entry: a teacher's outputs on every view of a :class:`~kdcore.data.ViewBank`:
its logits (the KD stage), or the map of a hint layer (FitNets stage 1).

File format: one safetensors file, read in one sequential pass (never one file per sample:
torchdistill dropped its per-sample cache because small reads were slower than decoding).

=========  ===========  =================================================================
tensor     dtype        shape and meaning
=========  ===========  =================================================================
values     float16      ``(N, K, ...)``: the teacher's output for sample and view: logits
                        ``(N, K, C)``, or a hint map ``(N, K, C_h, H_h, W_h)``
views      int16        ``(N, K, 5)``: each view's parameters (:mod:`kdcore.data.views`)
start      int64        ``(N,)``: the view each sample shows in epoch 1
index      int16/int32  top-k logits only: ``(N, K, k)``, the classes of ``values``
rest       float16      top-k logits only: ``(N, K)``, the logit each other class gets
=========  ===========  =================================================================

Top-k logits: an entry of full logits grows with the class count (ImageNet's 1,000 classes,
1.28M images, 16 views: 41 GB, more than a run can hold in memory). When the dense entry
would exceed the run's budget (:attr:`kdcore.cache.CacheRequest.entry_max_bytes`), each view
keeps its :data:`TOP_K` largest logits and one value for all the others, chosen so that they
carry the rest of the probability mass at T = 1 (``rest = logsumexp(others) − log(C − k)``):
the softmax at T = 1 keeps the top-k probabilities and the total of the others, up to
float16 rounding, and spreads the others' mass evenly (FKD, Shen & Xing 2022, also stores
top-k soft labels). This is lossy at T > 1, which is why it is a fallback, not the default:
on synthetic 1,000-class logits with a long tail (``tests/kdcore/cache/test_top_k.py``) the
KD term against a random student moved by 2.8% at T = 1 and 54% at T = 4.

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
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors.torch
import torch

from kdcore.cache.key import CACHE_FORMAT_VERSION
from kdcore.data import VIEW_PARAMS, Normalizer, ViewBank, ViewPolicy
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
# Logits whose dense entry would not fit the run's budget keep this many per view, plus the
# rest of the mass (see the module docstring): 1,000 classes take 130 bytes a view, not 2,000.
TOP_K = 32


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
    index: torch.Tensor | None = None  # top-k logits: (N, K, k) classes of ``values``
    rest: torch.Tensor | None = None  # top-k logits: (N, K) float16 logit of the others
    classes: int = 0  # top-k logits: C

    def to(self, device: torch.device) -> TeacherOutputs:
        return TeacherOutputs(
            self.values.to(device),
            self.bank.to(device),
            self.index.to(device) if self.index is not None else None,
            self.rest.to(device) if self.rest is not None else None,
            self.classes,
        )

    def lookup(self, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """``(B, ...)`` float32 outputs of view ``view[j]`` of sample ``idx[j]``."""
        values = self.values[idx, view].float()
        if self.index is None or self.rest is None:
            return values
        out = self.rest[idx, view].float()[:, None].repeat(1, self.classes)  # (B, C)
        return out.scatter_(1, self.index[idx, view].long(), values)


def compute_outputs(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    normalizer: Normalizer,
    bank: ViewBank,
    *,
    runtime: Runtime,
    top_k: int | None = None,
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
        top_k: store logits as their ``top_k`` largest plus the rest of the mass (see the
            module docstring); None: store the outputs whole.

    Raises:
        Uncacheable: an output does not fit in float16.
    """
    n, k = len(x), bank.views
    step = BUILD_BATCH.get(x.device.type, BUILD_BATCH["cpu"])
    bank = bank.to(x.device)
    chunks: list[torch.Tensor] = []
    index_chunks: list[torch.Tensor] = []
    rest_chunks: list[torch.Tensor] = []
    classes = 0
    with torch.inference_mode():
        for i in range(0, n, step):
            idx = torch.arange(i, min(i + step, n), device=x.device)  # (B,)
            xb = normalizer(x[idx])  # (B, ...) float32
            per_view, per_view_index, per_view_rest = [], [], []
            for v in range(k):
                view = torch.full_like(idx, v)
                with runtime.autocast():
                    out = teacher(runtime.batch(bank.apply(xb, idx, view))).float()  # (B, ...)
                if not torch.isfinite(out).all() or out.abs().max() > _FP16_MAX:
                    raise Uncacheable(
                        "the teacher's outputs are not finite or too large for float16 storage"
                    )
                if top_k is not None:
                    classes = out.shape[1]
                    out, index, rest = _top_k(out, top_k)
                    per_view_index.append(index)
                    per_view_rest.append(rest.half())
                per_view.append(out.half().contiguous())  # stored precision at once
            chunks.append(torch.stack(per_view, 1).cpu())  # (B, K, ...)
            if top_k is not None:
                index_chunks.append(torch.stack(per_view_index, 1).cpu())  # (B, K, k)
                rest_chunks.append(torch.stack(per_view_rest, 1).cpu())  # (B, K)
    cpu_bank = bank.to(torch.device("cpu"))
    if top_k is None:
        return TeacherOutputs(torch.cat(chunks), cpu_bank)
    return TeacherOutputs(
        torch.cat(chunks), cpu_bank, torch.cat(index_chunks), torch.cat(rest_chunks), classes
    )


def _top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, k)`` largest logits, their ``(B, k)`` classes (int16, or int32 past 32,767) and
    the ``(B,)`` logit that gives each other class an equal share of their total mass."""
    c = logits.shape[1]
    values, index = logits.topk(k, dim=1)  # (B, k) each, largest first
    everything = logits.logsumexp(1)  # (B,)
    top = values.logsumexp(1)  # (B,)
    # log of the others' total mass: log(e^all − e^top), kept finite when it underflows
    others = everything + torch.log1p(-torch.exp(top - everything).clamp(max=1 - 1e-7))
    rest = torch.maximum(others - math.log(c - k), values[:, -1] - 60.0)
    dtype = torch.int16 if c <= torch.iinfo(torch.int16).max else torch.int32
    return values, index.to(dtype), rest


def _tensors(outputs: TeacherOutputs) -> dict[str, torch.Tensor]:
    tensors = {
        "values": outputs.values.cpu().contiguous(),
        "views": outputs.bank.params.cpu().contiguous(),
        "start": outputs.bank.start.cpu().contiguous(),
    }
    if outputs.index is not None and outputs.rest is not None:
        tensors["index"] = outputs.index.cpu().contiguous()
        tensors["rest"] = outputs.rest.cpu().contiguous()
    return tensors


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
        "classes": str(outputs.classes),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def load_outputs(
    path: Path, *, key: str, shape: tuple[int, ...], top_k: int | None = None
) -> TeacherOutputs:
    """Read and verify an entry in one sequential read.

    Args:
        path: the entry's file.
        key: the key it must carry.
        shape: the ``(N, K, ...)`` outputs the caller needs (``(N, K, C)`` for logits).
        top_k: the entry holds top-k logits (see :func:`compute_outputs`).

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
    names = {"values", "views", "start"} | ({"index", "rest"} if top_k is not None else set())
    if set(tensors) != names or meta.get("sha256") != tensors_sha256(tensors):
        raise CorruptEntry(f"cache entry {path.name} fails its sha256 check")
    values, views, start = tensors["values"], tensors["views"], tensors["start"]
    n, k = shape[:2]
    stored = shape if top_k is None else (n, k, top_k)
    if (
        values.shape != stored
        or values.dtype != torch.float16
        or views.shape != (n, k, VIEW_PARAMS)
        or start.shape != (n,)
    ):
        raise CorruptEntry(
            f"cache entry {path.name} holds values {tuple(values.shape)}, expected {stored}"
        )
    bank = ViewBank(policy, views, start)
    if top_k is None:
        return TeacherOutputs(values, bank)
    index, rest = tensors["index"], tensors["rest"]
    if (
        index.shape != stored
        or rest.shape != (n, k)
        or meta.get("classes") != str(shape[2])
        or int(index.max()) >= shape[2]
        or int(index.min()) < 0
    ):
        raise CorruptEntry(f"cache entry {path.name} has top-k logits of another shape")
    return TeacherOutputs(values, bank, index, rest, shape[2])
