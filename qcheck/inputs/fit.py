"""Will the run fit? A lower bound of the memory a run needs, checked before the reference is loaded.

A run holds the reference in fp32, one variant beside it (fidelity compares the two; variants are built one at a
time) and a batch of logits. The reference's size comes from its config, instantiated on the meta device (no
memory, a second even for 70B shapes); a variant's storage from its plan's dtype (qcheck's fake quantization keeps
each weight in the plan's float dtype). PTQ variants are not counted, so the figure stays a lower bound: a run
refused here could never have finished, and one let through may still need more.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qcheck.errors import QCheckError

GiB = 2**30
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class MemoryNeed:
    """The lower bound of a run's memory on one device, and its parts."""

    device: str
    parameters: int
    reference_bytes: int
    variant: str | None
    variant_bytes: int
    working_bytes: int
    available_bytes: int | None
    not_counted: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return self.reference_bytes + self.variant_bytes + self.working_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def message(self) -> str:
        """Why the run cannot fit, with the parts and what to do."""
        size = f"{self.parameters / 1e9:.2f}B parameters, {self.reference_bytes / GiB:.1f} GiB"
        parts = [f"the reference in fp32 ({size})"]
        if self.variant:
            parts.append(f"one variant beside it (the largest, {self.variant}: {self.variant_bytes / GiB:.1f} GiB)")
        parts.append(f"one batch of logits ({self.working_bytes / GiB:.1f} GiB)")
        skipped = f"; not counted: {', '.join(self.not_counted)}" if self.not_counted else ""
        digits = 1
        while digits < 4 and f"{self.total_bytes / GiB:.{digits}f}" == f"{(self.available_bytes or 0) / GiB:.{digits}f}":
            digits += 1  # never "needs 5.6 GiB and 5.6 GiB is available"
        return (f"this run needs at least {self.total_bytes / GiB:.{digits}f} GiB of {self.device} memory and "
                f"{(self.available_bytes or 0) / GiB:.{digits}f} GiB is available: {'; '.join(parts)}{skipped}. "
                "Run it where that much memory is free (--device cuda on a larger GPU, or a machine with more RAM), "
                "or leave out the fp32-stored variants (--variants fp16,bf16 keeps one half-precision copy); "
                "qcheck does not shard a model over several devices or offload it yet")


def model_size(folder: Path | None, trust_remote_code: bool = False) -> tuple[int, int] | None:
    """(parameters, vocabulary size) from the config in `folder`, instantiated on the meta device (tied weights
    counted once); None without a folder or when the config cannot be instantiated without its weights (the run is
    then not pre-checked)."""
    if folder is None:
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        return sum(p.numel() for p in model.parameters()), int(getattr(config, "vocab_size", 0) or 0)
    except Exception:  # noqa: BLE001 - an unknown architecture is checked when it loads, not here
        return None


def available_bytes(device: Any) -> int | None:
    """Free memory of the device: the CUDA allocator's free bytes, or the host's MemAvailable plus free swap."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (int(info["MemAvailable"].split()[0]) + int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        try:
            import psutil

            return int(psutil.virtual_memory().available + psutil.swap_memory().free)
        except ImportError:
            return None


def memory_need(parameters: int, variant_dtypes: dict[str, str], *, not_counted: tuple[str, ...] = (),
                vocab_size: int, context: int, batch: int, device: Any, available: int | None) -> MemoryNeed:
    """The lower bound for a reference of `parameters` and variants stored in the given dtypes."""
    largest = max(variant_dtypes, key=lambda n: _BYTES.get(variant_dtypes[n], 4), default=None)
    variant_bytes = parameters * _BYTES.get(variant_dtypes[largest], 4) if largest else 0
    return MemoryNeed(str(getattr(device, "type", device)), parameters, parameters * 4, largest, variant_bytes,
                      batch * context * vocab_size * 4, available, not_counted)


def check_fits(need: MemoryNeed) -> None:
    """Raise the run's bad-input error (exit 2) when the lower bound exceeds the free memory."""
    if not need.fits:
        raise QCheckError(need.message())
