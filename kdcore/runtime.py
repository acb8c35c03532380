"""Where and how a run computes: the device, the autocast precision and the memory format.

A config may leave each to ``auto``; :func:`resolve_runtime` turns the config into a
:class:`Runtime` once, at the start of :func:`kdcore.train.train`, and everything after it
(the stages' autocast, the gradient scaler, the teacher cache's key, ``report.json``) reads
the resolved values.

The rule for ``precision: "auto"`` follows measurements (docs/results.md, "Precision and
memory format"): bf16 autocast where the hardware computes bf16 natively (a CUDA GPU that
supports it; a CPU with AVX-512 BF16 or AMX), where training steps ran 1.7–2.3× faster than
fp32 contiguous here (with channels-last), CIFAR-10 accuracy in docs/results.md; fp16 with
loss scaling on older CUDA GPUs; fp32 elsewhere (a CPU without bf16 instructions emulates
it, which is slower than fp32). The rule reads the hardware, never a timing, so one machine
always resolves a config the same way and a resumed run computes exactly as the interrupted
one did.

``memory_format: "auto"`` is channels-last for image models (4-D inputs): convolutions run
faster on NHWC tensors on CPUs and on GPUs' tensor cores (1.36–1.50× in fp32 on this CPU
for ResNet-20, ResNet-8 and the CIFAR-10 example student), and for other models it changes
nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from kdcore.contract import DistillConfig

__all__ = [
    "DeviceUnavailable",
    "MemoryFormat",
    "Precision",
    "Runtime",
    "in_memory_format",
    "resolve_device",
    "resolve_runtime",
]

Precision = Literal["fp32", "bf16", "fp16"]
MemoryFormat = Literal["channels_last", "contiguous"]


@dataclass(frozen=True)
class Runtime:
    """The resolved ``device``, ``precision`` and ``memory_format`` of a run."""

    device: torch.device
    precision: Precision
    memory_format: MemoryFormat

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision as resolved (nothing for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @property
    def channels_last(self) -> bool:
        return self.memory_format == "channels_last"

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` on the device, in the memory format (in place, as ``Module.to``)."""
        module = module.to(self.device)
        return in_memory_format(module, self.memory_format) if self.channels_last else module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the memory format (image batches only; others as they are)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def in_memory_format(module: nn.Module, fmt: MemoryFormat) -> nn.Module:
    """``module``'s 4-D parameters and buffers in ``fmt``, in place (``Module.to``)."""
    target = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    # Module.to takes memory_format at run time; its type stubs leave it out.
    return module.to(memory_format=target)  # type: ignore[call-overload]


class DeviceUnavailable(RuntimeError):
    """The config asks for a device this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``auto``, ``cpu``, ``cuda``) means on this machine.

    Raises:
        DeviceUnavailable: ``cuda`` on a machine without a CUDA GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable('config asks for device "cuda" but no CUDA GPU is available')
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (so bf16 autocast is faster than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        # torch.cpu's probes of the instruction set (the ones its oneDNN kernels pick on).
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)
    return False


def auto_precision(device: torch.device) -> Precision:
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def resolve_runtime(config: DistillConfig, *, images: bool) -> Runtime:
    """The runtime of ``config`` on this machine; ``images``: the inputs are ``(C, H, W)``."""
    device = resolve_device(config.device)
    precision: Precision = (
        auto_precision(device) if config.precision == "auto" else config.precision
    )
    fmt: MemoryFormat
    if config.memory_format == "auto":
        fmt = "channels_last" if images else "contiguous"
    else:
        fmt = config.memory_format
    return Runtime(device=device, precision=precision, memory_format=fmt)
