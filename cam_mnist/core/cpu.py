"""What Linux says of this machine's CPU (``/proc/cpuinfo``): its model name and feature flags, read in one place
for the trainer's bfloat16 note and the benchmark's record of the machine."""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str] | None:
    """The feature flags (x86's ``flags``, Arm's ``Features``); None where the list cannot be read (another OS)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return None
    return {w for line in lines if line.startswith(("flags", "Features")) for w in line.split(":", 1)[-1].split()}


def native_bfloat16(cpuinfo: str | Path = CPUINFO) -> bool | None:
    """Whether this CPU computes bfloat16 natively: x86's avx512_bf16 or amx_bf16 flag, Arm's bf16 feature; None
    where the flags cannot be read."""
    words = cpu_flags(cpuinfo)
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"}) if words else None


def cpu_name(cpuinfo: str | Path = CPUINFO) -> str:
    """The CPU model and its widest vector units: benchmark numbers depend on them (AVX-512 doubles AVX2's)."""
    try:
        info = Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = cpu_flags(cpuinfo) or set()
    units = [u for u in ("avx512f", "amx_tile") if u in flags] or [u for u in ("avx2",) if u in flags]
    return f"{name} ({', '.join(units) or 'no AVX2'})"
