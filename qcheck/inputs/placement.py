"""Where a model's weights live: `--device-map` and `--max-memory`, parsed and validated without importing torch, the
keyword arguments accelerate's big-model loading takes (through transformers' `from_pretrained`), and a summary of
the placement a loaded model got (devices, decoder layers and bytes each), for the report.

The reference and one variant are alive at once and each variant is loaded with the reference's own placement, so
--max-memory is a budget per model: a device holds at most twice its budget (plus a batch of activations).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qcheck.errors import ConfigError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's automatic placements (`device_map=` in from_pretrained)."""
_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps|\d+)$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_MEMORY_HELP = "pass DEVICE=SIZE pairs, e.g. --max-memory 0=20GiB,1=20GiB,cpu=64GiB (DEVICE a GPU index or cpu)"
_MAP_HELP = f"pass one of {', '.join(STRATEGIES)}, or one device (cpu, cuda, cuda:N)"


def parse_size(text: str) -> int:
    """Bytes of a size such as 20GiB, 500MB or 1048576 (accelerate's units: GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise ConfigError(f"--max-memory: {text!r} is not a size; use a number with a unit such as 20GiB, 500MB or "
                          "bytes; " + _MEMORY_HELP, field="--max-memory")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()]
    if value < 1:
        raise ConfigError(f"--max-memory: {text!r} is not a positive size; " + _MEMORY_HELP, field="--max-memory")
    return int(value)


def parse_max_memory(text: str) -> tuple[tuple[str, int], ...]:
    """`0=20GiB,cpu=64GiB` as ((device, bytes), ...): a GPU by index, or cpu; each device once."""
    pairs: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        device, sep, size = (s.strip() for s in part.partition("="))
        device = device.lower().removeprefix("cuda:")
        if not sep or not (device.isdigit() or device in ("cpu", "mps")):
            raise ConfigError(f"--max-memory: {part!r} is not DEVICE=SIZE; " + _MEMORY_HELP, field="--max-memory")
        if any(device == d for d, _ in pairs):
            raise ConfigError(f"--max-memory names {device} twice; " + _MEMORY_HELP, field="--max-memory")
        pairs.append((device, parse_size(size)))
    if not pairs:
        raise ConfigError(f"--max-memory is empty; {_MEMORY_HELP}", field="--max-memory")
    return tuple(pairs)


def check_device_map(text: str) -> str:
    """A valid --device-map value (an accelerate strategy or one device), else a ConfigError saying what to pass."""
    value = text.strip()
    if value in STRATEGIES or _DEVICE.match(value):
        return value
    raise ConfigError(f"--device-map must be an accelerate placement, got {text!r}: {_MAP_HELP}", field="--device-map")


@dataclass(frozen=True)
class Placement:
    """A run's requested placement: accelerate's strategy (or one device), the per-model memory budget in bytes per
    device, and the folder disk-offloaded weights are written to (None: a temporary folder per model)."""

    device_map: str
    max_memory: tuple[tuple[str, int], ...] = ()
    offload_folder: str | None = None

    @property
    def spreads(self) -> bool:
        """Whether accelerate chooses the placement (a strategy), rather than one device holding everything."""
        return self.device_map in STRATEGIES

    def max_memory_dict(self) -> dict[int | str, int]:
        """The budget as accelerate takes it (GPU keys as ints)."""
        return {int(d) if d.isdigit() else d: b for d, b in self.max_memory}

    def gpu_budget(self) -> dict[int, int]:
        """Bytes per GPU index that one model may take."""
        return {int(d): b for d, b in self.max_memory if d.isdigit()}

    def one_device(self) -> str:
        """The device of a placement that is one device (`--device-map cuda:1` or `1` is `--device cuda:1`)."""
        return f"cuda:{self.device_map}" if self.device_map.isdigit() else self.device_map

    def load_kwargs(self, offload_folder: str) -> dict[str, Any]:
        """from_pretrained's keyword arguments for a spreading placement (disk offload into `offload_folder`)."""
        kwargs: dict[str, Any] = {"device_map": self.device_map, "offload_folder": offload_folder}
        if self.max_memory:
            kwargs["max_memory"] = self.max_memory_dict()
        return kwargs


def summarize(model: Any, placement: Placement | None) -> dict[str, Any]:
    """Which devices hold how many decoder layers and how many parameter bytes (from `model.hf_device_map`, the
    placement accelerate chose; a model without one is on the device of its parameters)."""
    device_map = dict(getattr(model, "hf_device_map", None) or {})
    params = {name: p.numel() * p.element_size() for name, p in model.named_parameters(remove_duplicate=True)}
    if not device_map:
        first = next(model.parameters(), None)
        device_map = {"": str(first.device) if first is not None else "cpu"}

    def where(name: str) -> str:
        best = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len, default="")
        return str(device_map.get(best, "cpu"))

    devices: dict[str, dict[str, int]] = {}
    for name, nbytes in params.items():
        entry = devices.setdefault(where(name), {"layers": 0, "bytes": 0})
        entry["bytes"] += nbytes
    for name in _decoder_layers(model):
        devices.setdefault(where(name), {"layers": 0, "bytes": 0})["layers"] += 1
    accelerators = [d for d in devices if d not in ("cpu", "disk", "meta")]
    offloaded = "disk" in devices or ("cpu" in devices and bool(accelerators))
    out: dict[str, Any] = {"devices": devices, "offloaded": offloaded,
                           "modules": {k or "(whole model)": str(v) for k, v in device_map.items()}}
    if placement is not None:
        out.update(device_map=placement.device_map,
                   max_memory={d: b for d, b in placement.max_memory} or None,
                   note="each variant is loaded with the reference's placement; --max-memory is a budget per model "
                        "(the reference and one variant are alive at once)")
    return out


def describe(summary: dict[str, Any]) -> str:
    """One line for the report: `cuda:0 12 layers 9.8 GiB, cpu 4 layers 3.2 GiB, disk ...`."""
    parts = [f"{device} {e['layers']} layers {e['bytes'] / 2**30:.2f} GiB" for device, e in summary["devices"].items()]
    head = f"device map {summary['device_map']}: " if summary.get("device_map") else ""
    return head + ", ".join(parts)


def _decoder_layers(model: Any) -> list[str]:
    """Names of the decoder blocks (the entries of the model's largest ModuleList)."""
    from torch import nn

    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return []
    name, blocks = max(lists, key=lambda item: len(item[1]))
    return [f"{name}.{i}" for i in range(len(blocks))]


def layers_by_device(model: Any) -> dict[Any, int]:
    """How many decoder layers run on each device (torch.device -> count): where accelerate's hook executes a layer
    (an offloaded layer runs on its execution device, usually the first GPU), else where its parameters are. The
    key/value cache and the kept activations of a layer live there, so batches are sized per device."""
    import torch

    from qcheck.quant.offload import execution_device

    modules = dict(model.named_modules())
    counts: dict[Any, int] = {}
    for name in _decoder_layers(model):
        layer = modules[name]
        where = next((d for d in map(execution_device, layer.modules()) if d is not None), None)
        if where is None:
            tensors = [t for t in (*layer.parameters(), *layer.buffers()) if t.device.type != "meta"]
            where = tensors[0].device if tensors else "cpu"
        device = as_torch_device(where)
        counts[device] = counts.get(device, 0) + 1
    if not counts:
        first = next(model.parameters(), None)
        counts[first.device if first is not None else torch.device("cpu")] = int(
            getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 1)
    return counts


def as_torch_device(where: Any) -> Any:
    """accelerate's execution device (a GPU index, a string or a torch.device) as the torch.device tensors placed
    there report: "cuda" alone is the current GPU, as torch places it."""
    import torch

    device = torch.device(f"cuda:{where}" if isinstance(where, int) else where)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device
