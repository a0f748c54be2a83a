"""What the hardware decides: the precision a run trains in, and torch's thread count.

``precision: auto`` (the default) trains a CUDA GPU in bf16 where it runs bf16 natively and in
fp16 (with a loss scaler) where it does not; a CPU trains in fp32. bf16 on a CPU is only asked
for explicitly: where the CPU has bf16 instructions (AVX512-BF16 or AMX on x86, the BF16
extension on ARM) it is faster, but some of its convolution kernels now and then return
non-finite weight gradients (torch 2.14 on an AMX CPU: a ResNet's 1x1 feature maps, one backward
pass in tens), so a run's results no longer repeat exactly; where the CPU lacks them, bf16 is
emulated and slower than fp32, which a warning says, with the slowdown measured on the spot.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .._errors import SpecError

#: CPU feature flags (as the operating system lists them) that mean native bf16, best first.
_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "ARM BF16"))


def cpu_bf16_instructions() -> str | None:
    """The name of this CPU's native bf16 instructions, or None where it has none (or they
    cannot be found out)."""
    if sys.platform.startswith("linux"):
        return _linux_bf16()
    if sys.platform == "darwin" and platform.machine() == "arm64":
        try:
            found = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"],
                                   capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return "ARM BF16" if found.stdout.strip() == "1" else None
    return None


def _linux_bf16() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM; the first CPU speaks for all
            flags.update(value.split())
            break
    return next((name for flag, name in _BF16_FLAGS if flag in flags), None)


def cuda_native_bf16(device: torch.device) -> bool:
    """Whether the GPU runs bf16 in hardware (not through emulation)."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # a torch without the argument counts emulation as support
            return torch.cuda.get_device_capability(device) >= (8, 0)


def bf16_slowdown(size: int = 256, repeats: int = 10) -> float:
    """How many times as long a ``size`` x ``size`` matrix product takes in bf16 as in fp32 on
    this CPU (above 1: bf16 is slower)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)

    def seconds(dtype: torch.dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # the first product pays for setting up the kernel
        started = time.perf_counter()
        for _ in range(repeats):
            x @ y
        return time.perf_counter() - started

    return seconds(torch.bfloat16) / max(seconds(torch.float32), 1e-9)


def choose_precision(asked: str, device: torch.device, say: Callable[[str], None]) -> str:
    """The precision a run trains in (``fp32``, ``bf16`` or ``fp16``) for the option ``asked``
    on ``device``; says what ``auto`` chose, and warns about bf16 where it is emulated."""
    if asked == "auto":
        chosen, why = _automatic(device)
        say(f"precision auto: {chosen} ({why})")
        return chosen
    if asked == "fp16" and device.type != "cuda":
        raise SpecError([("training.precision", "fp16 needs a CUDA GPU; use auto or bf16 on"
                          " a CPU")])
    if asked == "bf16":
        warning = _emulated_bf16(device)
        if warning:
            say(f"warning: {warning}")
        elif device.type == "cpu":
            say(f"precision bf16: on this CPU's {cpu_bf16_instructions()} instructions; a step"
                " whose gradients are not finite is skipped and counted (some CPU bf16 kernels"
                " give them now and then), so runs do not repeat exactly")
    return asked


def choose_channels_last(asked: bool | str, device: torch.device, precision: str) -> bool:
    """Whether a run keeps image batches and the model channels-last, for the option ``asked``:
    ``auto`` where oneDNN's CPU convolutions or a GPU's mixed-precision ones run faster so."""
    if asked != "auto":
        return bool(asked)
    return device.type == "cpu" or (device.type == "cuda" and precision in ("bf16", "fp16"))


def _automatic(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if cuda_native_bf16(device):
            return "bf16", "the GPU runs bf16 natively"
        return "fp16", "the GPU has no native bf16"
    if device.type == "cpu":
        found = cpu_bf16_instructions()
        if found:
            return "fp32", (f"on a CPU; precision: bf16 uses its {found} instructions, faster"
                            " but not exactly repeatable")
        return "fp32", "on a CPU without native bf16 instructions"
    return "fp32", f"mixed precision is not chosen automatically on {device.type}"


def _emulated_bf16(device: torch.device) -> str | None:
    """Why bf16 is a trap on ``device``, measured; None where it runs natively."""
    if device.type == "cuda":
        if cuda_native_bf16(device):
            return None
        major, minor = torch.cuda.get_device_capability(device)
        return (f"precision bf16 on a GPU of compute capability {major}.{minor}, which has no"
                " native bf16: it is emulated and slower than fp16; use precision auto or fp16")
    if device.type != "cpu" or cpu_bf16_instructions():
        return None
    ratio = bf16_slowdown()
    return (f"precision bf16 on a CPU without native bf16 instructions (torch's CPU capability:"
            f" {torch.backends.cpu.get_cpu_capability()}; no AVX512-BF16, AMX or ARM BF16)."
            f" bf16 is emulated here: a 256x256 matrix product took {ratio:.1f}x as long as in"
            " fp32. Use precision auto (fp32 on this CPU) or fp32")


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``count`` (None: left as it is) for the block."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
