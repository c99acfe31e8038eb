"""The run's GPU peak survives the latency step's reset of torch's peak counters (the counters stand in for a GPU's
allocator here: CI has none; the device run reads the real ones)."""
from __future__ import annotations

import torch

from qcheck.measure import gpu_peak


class Counters:
    """torch.cuda's peak counters: max allocated/reserved since the last reset."""

    def __init__(self) -> None:
        self.allocated, self.reserved = 0, 0

    def use(self, allocated: int, reserved: int) -> None:
        self.allocated, self.reserved = max(self.allocated, allocated), max(self.reserved, reserved)

    def reset(self, device=None) -> None:
        self.allocated, self.reserved = 0, 0


def test_the_run_peak_is_the_largest_before_and_after_a_reset(monkeypatch):
    c = Counters()
    monkeypatch.setattr(gpu_peak, "_SEEN", {})
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: c.allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: c.reserved)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", c.reset)
    c.use(8 << 30, 9 << 30)  # reference + a variant
    gpu_peak.reset_step_peak("cuda:0")  # the latency step measures its own peak
    c.use(5 << 30, 6 << 30)
    assert (c.allocated, c.reserved) == (5 << 30, 6 << 30)  # what the report used to say
    assert gpu_peak.run_peak("cuda:0") == (8 << 30, 9 << 30)
    c.use(10 << 30, 11 << 30)
    assert gpu_peak.run_peak("cuda:0") == (10 << 30, 11 << 30)
