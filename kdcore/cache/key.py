"""The cache key: a sha256 over everything that changes a teacher's stored outputs.

:class:`CacheKey` lists the inputs; :func:`cache_key` hashes their canonical JSON (sorted
keys, no whitespace). Two jobs share an entry exactly when every field is equal. Fields
that only make a key more specific than needed (``crop_padding`` without a crop) are kept
as given: a needless miss costs one build, a wrong hit would train on the wrong targets.

Not in the key, on purpose: the device the entry was computed on and the batch size of the
build (they move results by float rounding only, below the fp16 storage step), and the
training hyper-parameters (they do not change the teacher's outputs). The code's own
behaviour is covered by :data:`CACHE_FORMAT_VERSION`: bump it whenever the entry layout,
the views' arithmetic or the bank's drawing changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdcore.data import Dataset

__all__ = ["CACHE_FORMAT_VERSION", "CacheKey", "cache_key", "dataset_sha256", "file_sha256"]

# 2: teacher run with BatchNorm folded, resolved precision; 3: five view parameters (cutout)
CACHE_FORMAT_VERSION = 3
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes the outputs a cache entry holds.

    Attributes:
        teacher_sha256: sha256 of the teacher file's bytes (:func:`file_sha256`).
        data_sha256: sha256 of the training data before any split: of its file
            (:func:`file_sha256`) or of the in-memory tensors (:func:`dataset_sha256`).
        val_split: the fraction held out of it for validation (0: no split, e.g. when
            validation data is given separately).
        split_seed: the seed of that split.
        normalizer: :meth:`kdcore.data.Normalizer.to_dict` of the normalizer fitted on the
            training part.
        augment: the config's ``augment``.
        crop_padding: the config's ``crop_padding``.
        cutout: the config's ``cutout``.
        views_seed: the seed the view bank is drawn from (the config's ``seed``).
        views: ``K``, views per sample.
        output: what is stored: ``"logits"``, ``"logits:top<k>"`` (many classes: the top-k
            logits and the rest of the mass, :mod:`kdcore.cache.entry`), or
            ``"hint:<layer>"``, the maps of the
            teacher layer (dotted path) a FitNets run reads its hint from.
        stored_dtype: the stored precision (``"float16"``).
        precision: the config's ``precision``, the autocast the teacher ran under.
        version: :data:`CACHE_FORMAT_VERSION`.
        tenant: who may read the entry; ``None`` in the engine. The service sets it so that
            one tenant's entries never serve another's jobs, even for identical files.
    """

    teacher_sha256: str
    data_sha256: str
    val_split: float
    split_seed: int
    normalizer: dict[str, Any]
    augment: str
    crop_padding: int
    cutout: int
    views_seed: int
    views: int
    precision: str
    output: str = "logits"
    stored_dtype: str = "float16"
    version: int = CACHE_FORMAT_VERSION
    tenant: str | None = field(default=None)

    def canonical_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def cache_key(inputs: CacheKey) -> str:
    """The entry's name: hex sha256 of ``inputs``' canonical JSON. A pure function."""
    return hashlib.sha256(inputs.canonical_json().encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dataset_sha256(data: Dataset) -> str:
    """Hex sha256 of an in-memory dataset: shapes, dtypes, sample and label bytes, classes."""
    h = hashlib.sha256()
    head = {
        "x": [str(data.x.dtype), list(data.x.shape)],
        "y": [str(data.y.dtype), list(data.y.shape)],
        "classes": list(data.classes),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(data.x.numpy().data)  # contiguous CPU tensors (Dataset checks): no copy
    h.update(data.y.numpy().data)
    return h.hexdigest()
