"""Evaluation: accuracy, NLL, teacher–student agreement, size and CPU speed."""

from __future__ import annotations

import copy
import io
import itertools
import statistics
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from kdcore.data import Dataset, Normalizer


class Scores(BaseModel):
    accuracy: float
    top5: float | None
    nll: float
    samples: int
    agreement: float | None = None


class Speed(BaseModel):
    latency_ms: float  # median, batch 1, one thread
    throughput: float  # samples/s at ``batch_size``
    batch_size: int
    threads: int  # for the throughput figure


@torch.no_grad()
def predict(
    model: nn.Module, data: Dataset, normalize: Normalizer, *, batch_size: int = 512
) -> torch.Tensor:
    """Logits for every sample of ``data``, in order, as float32 on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = [
            model(normalize(data.x[i : i + batch_size].to(device))).float()
            for i in range(0, len(data), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)  # (N, K)


def score(
    logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
) -> Scores:
    """Top-1/top-5 accuracy and NLL of ``logits``; agreement with ``reference`` logits."""
    labels = labels.to(logits.device)
    top1 = logits.argmax(dim=1)
    top5 = None
    if logits.shape[1] > 5:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()
    agreement = None
    if reference is not None:
        agreement = (top1 == reference.to(logits.device).argmax(dim=1)).float().mean().item()
    return Scores(
        accuracy=(top1 == labels).float().mean().item(),
        top5=top5,
        nll=F.cross_entropy(logits, labels).item(),
        samples=len(labels),
        agreement=agreement,
    )


def size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict (parameters and buffers)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    runs: int = 50,
    warmup: int = 5,
    batch_size: int = 256,
    min_seconds: float = 0.2,
) -> Speed:
    """CPU latency at batch 1 (median of ``runs``) and throughput at ``batch_size``.

    Measured on a CPU copy in eval mode, so a GPU job still reports what a CPU deployment
    sees. Latency runs on one thread: batch-1 inference of a small model gains little from
    more, and a busy machine (a training job beside it) makes multi-threaded timings of tiny
    ops swing by orders of magnitude while one thread stays steady. Throughput uses torch's
    thread count, recorded with it.
    """
    # A model already on the CPU is timed as it is: torch.export graphs can be neither
    # deep-copied nor switched with .eval() (a frozen teacher is in eval mode already).
    on_gpu = any(
        t.device.type != "cpu" for t in itertools.chain(model.parameters(), model.buffers())
    )
    cpu = copy.deepcopy(model).cpu() if on_gpu else model
    was_training = cpu.training
    if was_training:
        cpu.eval()
    one = torch.zeros(1, *input_shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            cpu(one)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            cpu(one)
            times.append(time.perf_counter() - t0)
        batch = torch.zeros(batch_size, *input_shape)
    finally:
        torch.set_num_threads(threads)
    try:
        cpu(batch)
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_seconds or n == 0:
            cpu(batch)
            n += batch_size
    finally:
        if was_training:
            cpu.train()
    return Speed(
        latency_ms=statistics.median(times) * 1000,
        throughput=n / elapsed,
        batch_size=batch_size,
        threads=threads,
    )
