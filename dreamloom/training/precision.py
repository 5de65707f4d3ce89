"""Choosing devices and numeric precision for training."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamloom.errors import DreamloomError
from dreamloom.models.precision import fastest_half_dtype


@dataclass(frozen=True)
class Precision:
    name: str  # "no", "fp16" or "bf16"
    autocast_dtype: torch.dtype | None
    frozen_dtype: torch.dtype  # dtype of the modules that do not train
    device_type: str

    @property
    def needs_grad_scaler(self) -> bool:
        return self.autocast_dtype == torch.float16

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """``auto``: bf16 on GPUs that have it (else fp16) and on CPUs with native bf16 (AMX,
    AVX512-BF16), full precision on other CPUs. Under mixed precision the frozen weights are
    stored in the half precision, as diffusers' training scripts keep them (autocast would
    otherwise cast every frozen weight on every call); trainable weights and optimizer state stay
    fp32."""
    on_cuda = device.type == "cuda"
    if setting == "auto":
        half = fastest_half_dtype(device)
        setting = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[half]
    if setting == "fp16" and not on_cuda:
        raise DreamloomError("mixed_precision fp16 needs a GPU; use bf16 or no on CPU")
    if setting == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise DreamloomError("this GPU does not support bf16; use mixed_precision fp16")
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[setting]
    return Precision(setting, dtype, dtype or torch.float32, device.type)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's resident-memory high-water mark.

    Read from /proc (VmHWM) where it exists: ``getrusage``'s ru_maxrss survives fork and exec
    on Linux, so a child would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
