"""Reading and rewriting the weights of a model accelerate dispatched with CPU or disk offload.

An offloaded module holds its parameters on the meta device; accelerate's hook (`module._hf_hook`) loads them from
its weights map before each forward. `onloaded(module)` puts a module's real tensors in place for the duration of a
block (to read them, or to quantize them in place) and, with write=True, stores what the block left there back
into the weights map: CPU-offloaded tensors in accelerate's in-memory state dict, disk-offloaded ones as new files
in the model's own offload folder (never into the checkpoint's safetensors files, which disk offload reads
directly). A module that is not offloaded is left as it is: the default single-device path is unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed the model over several devices or offloaded part of it (it has hooks then, and a
    deep copy of it would share its weights map, so variants are built another way)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    return len({str(v) for v in device_map.values()}) > 1 or any(str(v) == "disk" for v in device_map.values())


def _hooks(module: nn.Module) -> list[Any]:
    """accelerate's hooks on `module`: a SequentialHook's members, or the one hook, or none."""
    hook = getattr(module, "_hf_hook", None)
    return list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))


def tied_pointers(model: nn.Module) -> set[int]:
    """The storage addresses accelerate's hooks know tied weights by (`tied_params_map`): a hook loading a tensor
    whose address is one of them takes the tied copy it cached instead, so the storage behind each must stay alive
    and in place while the model runs, or a new tensor allocated at a freed address is mistaken for it."""
    keys: set[int] = set()
    for module in model.modules():
        for hook in _hooks(module):
            keys.update(getattr(hook, "tied_params_map", None) or ())
    return keys


def offloaded_by_execution_device(model: nn.Module) -> dict[torch.device, list[torch.Tensor]]:
    """The float tensors accelerate keeps offloaded (on the meta device), each once, by the device the hook of the
    module holding them (or of its nearest ancestor with one) loads them onto."""
    from qcheck.inputs.placement import as_torch_device

    out: dict[torch.device, list[torch.Tensor]] = {}
    seen: set[int] = set()

    def walk(module: nn.Module, inherited: Any) -> None:
        own = execution_device(module)
        device = inherited if own is None else own
        for t in [*module._parameters.values(), *module._buffers.values()]:
            if t is not None and t.device.type == "meta" and t.is_floating_point() and id(t) not in seen \
                    and device is not None:
                seen.add(id(t))
                out.setdefault(as_torch_device(device), []).append(t)
        for child in module.children():
            walk(child, device)

    walk(model, None)
    return out


def _offload_hook(module: nn.Module) -> Any:
    return next((h for h in _hooks(module) if getattr(h, "offload", False)
                 and getattr(h, "weights_map", None) is not None), None)


def execution_device(module: nn.Module) -> Any:
    """The device accelerate's hook on `module` runs it on (an int, a string or a torch.device), None without one."""
    return next((h.execution_device for h in _hooks(module) if getattr(h, "execution_device", None) is not None),
                None)


def _offloaded_names(module: nn.Module, hook: Any) -> list[str]:
    names = [n for n, p in module.named_parameters(recurse=False) if p.device.type == "meta"]
    names += [n for n, b in module.named_buffers(recurse=False) if b is not None and b.device.type == "meta"]
    return [n for n in names if n in hook.weights_map]


@contextmanager
def onloaded(module: nn.Module, *, write: bool = False) -> Iterator[nn.Module]:
    """The module with its own offloaded tensors real (on its hook's execution device) inside the block; with
    write=True what the block left in them (new values, a new dtype) becomes what the hook loads from then on."""
    hook = _offload_hook(module)
    names = _offloaded_names(module, hook) if hook is not None else []
    if not names:
        yield module
        return
    device = hook.execution_device if hook.execution_device is not None else "cpu"
    for name in names:
        _set(module, name, hook.weights_map[name].to(device))
    try:
        yield module
    finally:
        for name in names:
            value = _get(module, name).detach()
            if write:
                _store(hook.weights_map, name, value)
            _set(module, name, torch.empty_like(value, device="meta"))


def named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter (tied ones once) then every buffer, offloaded ones read from their weights
    map one module at a time."""
    # tied parameters are one object as loaded; identities are taken now, while every original is alive (an
    # onloaded tensor is a new object whose id Python may reuse once it is freed)
    modules = list(model.named_modules())
    identity = {(prefix, name): id(p) for prefix, module in modules
                for name, p in module.named_parameters(recurse=False)}
    seen: set[int] = set()
    buffers: list[tuple[str, torch.Tensor]] = []
    for prefix, module in modules:
        with onloaded(module):
            for name, p in module.named_parameters(recurse=False):
                if identity[(prefix, name)] in seen:
                    continue
                seen.add(identity[(prefix, name)])
                yield f"{prefix}.{name}" if prefix else name, p
            for name, b in module.named_buffers(recurse=False):
                buffers.append((f"{prefix}.{name}" if prefix else name, b.detach().clone() if b.device.type != "meta"
                                else b))
    yield from buffers


def _get(module: nn.Module, name: str) -> torch.Tensor:
    return module._parameters[name] if name in module._parameters else module._buffers[name]


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[name] = value


def _store(weights_map: Any, name: str, value: torch.Tensor) -> None:
    """Write `value` where the hook reads `name` from: accelerate's in-memory state dict for CPU offload, a new
    .dat file in the model's own offload folder (and its index) for disk offload."""
    from accelerate.utils import OffloadedWeightsLoader, offload_weight

    loader, key = getattr(weights_map, "dataset", weights_map), getattr(weights_map, "prefix", "") + name
    value = value.to("cpu").contiguous()
    if isinstance(loader, OffloadedWeightsLoader):
        if key in loader.state_dict or not loader.save_folder:
            loader.state_dict[key] = value
        else:
            offload_weight(value, key, loader.save_folder, index=loader.index)
    elif isinstance(loader, dict):
        loader[key] = value
    else:
        raise TypeError(f"cannot write {key} back into accelerate's weights map of type {type(loader).__name__}")


def input_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: for a dispatched model the first accelerator its map uses (accelerate moves
    activations between devices and brings offloaded weights there), else the CPU; otherwise its parameters'."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if device_map:
        for where in device_map.values():
            if str(where) not in ("cpu", "disk", "meta"):
                return torch.device(f"cuda:{where}" if isinstance(where, int) else str(where))
        return torch.device("cpu")
    return next(model.parameters()).device


def misplaced(model: nn.Module) -> dict[str, str]:
    """Tensors of a dispatched model that are not where its `hf_device_map` puts them (name -> where they are): an
    offloaded module holds meta tensors (loaded on use), any other holds real ones on its mapped device."""
    device_map = {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    main = str(input_device(model))
    problems: dict[str, str] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        key = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len, default=None)
        if key is None:
            continue
        mapped = device_map[key]
        offloaded = mapped == "disk" or (mapped == "cpu" and main != "cpu")
        want = "meta" if offloaded else (f"cuda:{mapped}" if mapped.isdigit() else mapped)
        here = str(t.device)
        if here != want and not (offloaded and here == main) and not (want == "cuda" and here.startswith("cuda")):
            problems[name] = here
    return problems
