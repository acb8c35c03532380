"""A run's teacher outputs from the teacher cache: its logits (the KD stage) and, for FitNets,
its hint maps (stage 1), each read from the cache or built into it.

Both kinds are keyed the same way (:class:`kdcore.cache.CacheKey`) but for ``output`` and
``views``: each stage has its own view bank of ``min(teacher_views, stage epochs)`` views.
Whatever cannot be cached (outputs beyond float16, hint maps over the memory budget) leaves
its stage running the teacher as it would without a cache: a slower run, never a failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcore.cache import (
    CacheInfo,
    CacheKey,
    CacheRequest,
    TeacherOutputs,
    cache_key,
    compute_outputs,
    load_or_build,
    views_per_sample,
)
from kdcore.cache.entry import TOP_K, Uncacheable, save_outputs
from kdcore.contract import HintConfig
from kdcore.data import Dataset, ViewBank, ViewPolicy
from kdcore.fold import hint_source
from kdcore.hooks import FeatureTap
from kdcore.train.stages import Context

__all__ = ["CachedRun", "check_teacher", "from_cache"]


@dataclass(frozen=True)
class CachedRun:
    """What the cache gave a run: each output kind, or None where the teacher runs."""

    logits: TeacherOutputs | None = None
    logits_info: CacheInfo = CacheInfo()
    hints: TeacherOutputs | None = None
    hints_info: CacheInfo = CacheInfo()


def from_cache(
    ctx: Context, data: Dataset, request: CacheRequest, *, data_sha256: str, split: bool
) -> CachedRun:
    """The run's teacher outputs, from the cache or built into it.

    Args:
        ctx: the run (its teacher, config, runtime, normalizer and samples).
        data: the training part of the data.
        request: the cache to use.
        data_sha256: the data before the split.
        split: whether ``val_split`` of it was held out.

    On a hit the teacher is not called for logits at all (not even the shape check: the
    entry's shape is checked instead, and the key names the teacher and data that passed
    it). Hints run the teacher on two samples to learn the hint map's shape.
    """
    config = ctx.config
    try:
        logits, logits_info = _logits(ctx, data, request, data_sha256, split)
    except Uncacheable as exc:
        logits, logits_info = None, CacheInfo(note=f"{exc}; the KD stage ran the teacher")
    hints, hints_info = None, CacheInfo()
    if config.hint is not None:
        try:
            hints, hints_info = _hints(ctx, data, request, data_sha256, split, config.hint)
        except Uncacheable as exc:
            hints_info = CacheInfo(note=f"{exc}; the hint stage ran the teacher")
    return CachedRun(logits, logits_info, hints, hints_info)


def _key(
    ctx: Context,
    request: CacheRequest,
    data_sha256: str,
    split: bool,
    *,
    views: int,
    output: str,
) -> CacheKey:
    config = ctx.config
    return CacheKey(
        teacher_sha256=request.teacher_sha256,
        data_sha256=data_sha256,
        val_split=config.val_split if split else 0.0,
        split_seed=config.seed if split else 0,
        normalizer=ctx.normalizer.to_dict(),
        augment=config.augment,
        crop_padding=config.crop_padding,
        cutout=config.cutout,
        views_seed=config.seed,
        views=views,
        precision=ctx.runtime.precision,
        output=output,
        tenant=request.tenant,
    )


def _load_or_build(
    ctx: Context,
    request: CacheRequest,
    inputs: CacheKey,
    shape: tuple[int, ...],
    run_teacher: Callable[[], Callable[[torch.Tensor], torch.Tensor]],
    top_k: int | None = None,
) -> tuple[TeacherOutputs, CacheInfo]:
    """The entry of ``inputs``; a build draws its bank and calls ``run_teacher()`` for the
    function that maps a normalized batch to the stored output (logits stored as their
    ``top_k`` largest when given)."""
    key = cache_key(inputs)
    policy = _policy(ctx)

    def build() -> TeacherOutputs:
        size = (ctx.x.shape[-2], ctx.x.shape[-1]) if ctx.x.ndim == 4 else (1, 1)
        bank = ViewBank.draw(policy, shape[0], inputs.views, inputs.views_seed, size)
        return compute_outputs(
            run_teacher(), ctx.x, ctx.normalizer, bank, runtime=ctx.runtime, top_k=top_k
        )

    def save(path: Path, outputs: TeacherOutputs) -> None:
        save_outputs(path, outputs, key=key, inputs=inputs.canonical_json())

    return load_or_build(request.store, key, shape=shape, build=build, save=save, top_k=top_k)


def _policy(ctx: Context) -> ViewPolicy:
    cfg = ctx.config
    images = ctx.x.ndim == 4
    return ViewPolicy.from_augment(cfg.augment, cfg.crop_padding, cutout=cfg.cutout, images=images)


def _logits(
    ctx: Context, data: Dataset, request: CacheRequest, data_sha256: str, split: bool
) -> tuple[TeacherOutputs, CacheInfo]:
    teacher = ctx.logit_teacher
    assert teacher is not None, "train() caches for runs with a teacher only"
    k = views_per_sample(ctx.config, _policy(ctx), request.stage_epochs or ctx.config.epochs)
    dense = len(data) * k * data.num_classes * 2  # float16
    top_k = TOP_K if dense > request.entry_max_bytes and data.num_classes > TOP_K else None
    output = "logits" if top_k is None else f"logits:top{top_k}"
    if top_k is not None and len(data) * k * (top_k * 4 + 2) > request.entry_max_bytes:
        raise Uncacheable(
            f"even the top-{top_k} logits of {len(data)} samples × {k} views exceed the "
            f"budget of {request.entry_max_bytes / 2**20:.0f} MiB"
        )
    inputs = _key(ctx, request, data_sha256, split, views=k, output=output)

    def run_teacher() -> Callable[[torch.Tensor], torch.Tensor]:
        check_teacher(ctx, data)
        return teacher

    shape = (len(data), k, data.num_classes)
    return _load_or_build(ctx, request, inputs, shape, run_teacher, top_k=top_k)


def _hints(
    ctx: Context,
    data: Dataset,
    request: CacheRequest,
    data_sha256: str,
    split: bool,
    hint: HintConfig,
) -> tuple[TeacherOutputs, CacheInfo]:
    assert ctx.teacher is not None
    assert ctx.logit_teacher is not None
    source = hint_source(ctx.teacher, ctx.logit_teacher, hint.teacher_layer)
    with torch.no_grad(), FeatureTap(source, hint.teacher_layer, stop=True) as tap:
        per_sample = tuple(tap.run(ctx.probe())[1].shape[1:])  # (C_h, H_h, W_h)
    k = views_per_sample(ctx.config, _policy(ctx), hint.epochs)
    size = len(data) * k * math.prod(per_sample) * 2  # float16
    if size > request.entry_max_bytes:
        raise Uncacheable(
            f"hint maps of {size / 2**20:.0f} MiB ({len(data)} samples × {k} views × "
            f"{'×'.join(map(str, per_sample))}) exceed the budget of "
            f"{request.entry_max_bytes / 2**20:.0f} MiB"
        )
    inputs = _key(ctx, request, data_sha256, split, views=k, output=f"hint:{hint.teacher_layer}")
    taps: list[FeatureTap] = []

    def run_teacher() -> Callable[[torch.Tensor], torch.Tensor]:
        tap = FeatureTap(source, hint.teacher_layer, stop=True)
        taps.append(tap)
        return lambda xb: tap.run(xb)[1]

    try:
        return _load_or_build(ctx, request, inputs, (len(data), k, *per_sample), run_teacher)
    finally:
        for tap in taps:
            tap.close()


def check_teacher(ctx: Context, data: Dataset) -> None:
    """Refuse a teacher whose logits do not match the data's classes."""
    teacher = ctx.logit_teacher
    assert teacher is not None
    with torch.no_grad():
        out = teacher(ctx.probe())
    if not isinstance(out, torch.Tensor) or out.shape != (2, data.num_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the teacher outputs {got} per sample, but the data has {data.num_classes} classes; "
            "use a teacher trained on these classes"
        )
