"""Which half precision this machine runs fast, for training (``mixed_precision: auto``) and serving.

On CUDA: bf16 where the GPU has it, else fp16. On a CPU: bf16 only where the CPU has native bf16
instructions (Intel AMX or AVX512-BF16; Arm's BF16 extension), where a bf16 matmul runs several
times faster than fp32; elsewhere bf16 is emulated and slower than fp32, so fp32 stays.
``DREAMLOOM_CPU_BF16=1`` or ``0`` overrides the detection (tests pin it to 0 so that they compute
the same numbers on every machine).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from dreamloom.errors import DreamloomError

CPU_BF16_ENV = "DREAMLOOM_CPU_BF16"
# /proc/cpuinfo flags of native bf16 arithmetic: Intel AMX, AVX512-BF16, Arm's BF16 extension.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (the environment variable decides when set)."""
    override = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if override in {"1", "true", "yes"}:
        return True
    if override in {"0", "false", "no"}:
        return False
    return _cpuinfo_has_bf16(Path("/proc/cpuinfo"))


@cache
def _cpuinfo_has_bf16(cpuinfo: Path) -> bool:
    return bf16_in_cpuinfo(cpuinfo.read_text()) if cpuinfo.is_file() else False


def bf16_in_cpuinfo(text: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 flag (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"} and BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


def fastest_half_dtype(device: torch.device) -> torch.dtype | None:
    """The half precision that runs fastest on ``device``, or None where fp32 is fastest."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


SERVING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def inference_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype generation loads a base in. ``auto``: fp16 on CUDA (as diffusers serves SD), bf16
    on CPUs with native bf16, fp32 elsewhere; a deployment may name one instead (bf16 halves the
    memory of an SDXL on any CPU, at emulated speed where the CPU lacks bf16). Serving, sample
    grids and ``dreamloom generate`` share it."""
    device = torch.device(device)
    if precision not in SERVING_PRECISIONS:
        raise DreamloomError(f"unknown precision {precision!r}; choose one of {', '.join(SERVING_PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DreamloomError("fp16 inference needs a GPU; use bf16 or fp32 on a CPU")
    if precision != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cuda":
        return torch.float16
    return fastest_half_dtype(device) or torch.float32
