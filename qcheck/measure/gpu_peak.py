"""The run's peak GPU allocation, kept across the resets of torch's peak counter that a step measuring its own
peak needs (the latency step resets it per subject; the run's figure read after such a reset was that subject's
peak alone: 5,948 MiB for a 1.2B run that held an 8 GiB reference and variant at once)."""
from __future__ import annotations

from typing import Any

_SEEN: dict[str, tuple[int, int]] = {}
"""Per device: the largest (allocated, reserved) peaks read before a reset."""


def reset_step_peak(device: Any) -> None:
    """Remember the peaks so far, then reset torch's counters, so a step can read its own peak after it."""
    import torch

    key = str(device)
    old = _SEEN.get(key, (0, 0))
    _SEEN[key] = (max(old[0], torch.cuda.max_memory_allocated(device)),
                  max(old[1], torch.cuda.max_memory_reserved(device)))
    torch.cuda.reset_peak_memory_stats(device)


def run_peak(device: Any) -> tuple[int, int]:
    """The (allocated, reserved) peak bytes of the whole run on `device`, resets included."""
    import torch

    old = _SEEN.get(str(device), (0, 0))
    return (max(old[0], torch.cuda.max_memory_allocated(device)),
            max(old[1], torch.cuda.max_memory_reserved(device)))
