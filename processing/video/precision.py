"""The dtype inference runs in: `--dtype auto|float32|bfloat16|float16` (pipeline: `torch_dtype=`).

`auto` is bf16 where the hardware multiplies bf16 natively, fp32 elsewhere:
  - CPU: bf16 when it has AVX-512 BF16 or AMX-BF16 units. On Linux these are read from the flags of
    /proc/cpuinfo (`avx512_bf16`, `amx_bf16`), which say what the kernel lets programs use; elsewhere from torch's
    own CPU probe (cpuinfo: `torch.cpu._is_avx512_bf16_supported`, `_is_amx_tile_supported`). Without such units
    torch still computes bf16, emulated in fp32 registers, several times slower than fp32: `auto` never picks it there.
  - CUDA: bf16 when the GPU supports it (Ampere and later), else fp32.
float16 needs a CUDA device: CPU kernels for it are few and slow.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text (x86: `flags`, Arm: `Features`)."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 multiply units (AVX-512 BF16 or AMX-BF16)."""
    if _CPUINFO.is_file():
        return bool(cpu_flags(_CPUINFO.read_text(errors="replace")) & set(_NATIVE_BF16_FLAGS))
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """`auto` / a dtype name / a torch dtype / None (= auto) -> the torch dtype to compute in on `device`."""
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype}")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"float16 needs a CUDA device, got device {device}: use bfloat16 or float32")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")
