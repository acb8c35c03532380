"""The teacher cache: a teacher's outputs computed once per view and shared between runs.

- :mod:`~kdcore.cache.key`: :class:`CacheKey` and :func:`cache_key`, the content address;
- :mod:`~kdcore.cache.entry`: :class:`TeacherOutputs`, computing them, and the one-file
  safetensors format with its integrity check;
- :mod:`~kdcore.cache.store`: the :class:`TeacherCache` interface, :class:`LocalFolderCache`,
  and :func:`load_or_build`.

:func:`kdcore.train.train` takes a :class:`CacheRequest`; with one, the KD stage (``kd``, and
FitNets' second stage) reads the teacher's logits for each sample's view of the epoch from
the entry and never runs the teacher, and the student trains on the same view. FitNets'
hint stage does the same with the hint layer's maps, in an entry of their own, when it fits
:attr:`CacheRequest.entry_max_bytes`; otherwise it runs the teacher. Logits whose entry would
not fit are stored as their top-k plus the rest of the mass.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdcore.cache.entry import CorruptEntry, TeacherOutputs, compute_outputs, load_outputs
from kdcore.cache.key import CACHE_FORMAT_VERSION, CacheKey, cache_key, dataset_sha256, file_sha256
from kdcore.cache.store import CacheInfo, LocalFolderCache, TeacherCache, load_or_build
from kdcore.contract import CACHE_ENTRY_MAX_BYTES, DistillConfig
from kdcore.data import ViewPolicy

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheInfo",
    "CacheKey",
    "CacheRequest",
    "CorruptEntry",
    "LocalFolderCache",
    "TeacherCache",
    "TeacherOutputs",
    "cache_key",
    "compute_outputs",
    "dataset_sha256",
    "file_sha256",
    "load_or_build",
    "load_outputs",
    "views_per_sample",
]


@dataclass(frozen=True)
class CacheRequest:
    """Use the teacher cache in a run.

    Attributes:
        store: where entries live.
        teacher_sha256: the teacher file's sha256 (:func:`file_sha256`): the teacher's
            identity in the key (the caller has the file; :func:`kdcore.train.train` only
            sees the module).
        data_sha256: the training data's sha256 before any split; None: hash the tensors
            (:func:`dataset_sha256`).
        tenant: goes into the key (:attr:`CacheKey.tenant`); the service's business.
        entry_max_bytes: the largest entry the run holds in memory: logits over it are
            stored as their top-k, FitNets hint maps over it are not cached (stage 1 runs
            the teacher) (:data:`kdcore.contract.CACHE_ENTRY_MAX_BYTES`, the default, says
            why 2 GiB).
        stage_epochs: the KD stage length the logits entry's ``K`` is sized for
            (:func:`views_per_sample`); None: the run's own ``epochs``. A job's short probe
            runs (:mod:`kdcore.tune`) pass the job's, so that they read its entry.
    """

    store: TeacherCache
    teacher_sha256: str
    data_sha256: str | None = None
    tenant: str | None = None
    entry_max_bytes: int = CACHE_ENTRY_MAX_BYTES
    stage_epochs: int | None = None


def views_per_sample(config: DistillConfig, policy: ViewPolicy, epochs: int) -> int:
    """``K`` for a stage of ``epochs`` epochs: 1 without augmentation (the sample itself),
    else ``min(teacher_views, epochs)``: the stage shows each sample one view per epoch, so
    more views would never be seen, and the build never runs the teacher more often than
    the in-loop teacher would have."""
    if not policy.active:
        return 1
    return min(config.teacher_views, epochs)
