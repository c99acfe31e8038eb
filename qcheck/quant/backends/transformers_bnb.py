"""bitsandbytes through transformers' BitsAndBytesConfig: the reference saved as a folder, reloaded quantized.

int8 is LLM.int8 (outlier threshold recorded); nf4 / fp4 with optional double quantization. This is the path
users take (`from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`); qcheck's own plan-based
`bnb-*` formats swap modules directly. Runs on CPU with bitsandbytes >= 0.50, and on CUDA.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError, ModelLoadError, require
from qcheck.quant.backends import BackendVariant, manifest_of, save_float_folder

MODES = ("int8", "nf4", "fp4")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BnbConfigBackend:
    """bitsandbytes int8 / nf4 / fp4 applied by transformers while loading a saved copy of the reference."""

    mode: str = "nf4"
    threshold: float = 6.0
    double_quant: bool = True
    compute_dtype: str = "fp32"
    device: str = "cpu"
    skip: tuple[str, ...] = ("lm_head",)
    name: str = "bnb-config"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"bnb-config mode {self.mode!r}: use one of {', '.join(MODES)}", field="mode")
        if self.compute_dtype not in _DTYPES:
            raise ConfigError(f"compute_dtype {self.compute_dtype!r}: use one of {', '.join(_DTYPES)}",
                              field="compute_dtype")

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return "the package 'bitsandbytes' is not installed"
        return None

    def config(self) -> Any:
        """The transformers BitsAndBytesConfig this backend loads with."""
        from transformers import BitsAndBytesConfig

        if self.mode == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(self.threshold),
                                      llm_int8_skip_modules=list(self.skip))
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.mode,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=_DTYPES[self.compute_dtype],
                                  llm_int8_skip_modules=list(self.skip))

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        require("bitsandbytes", "the bnb-config backend", extra=None)
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="qcheck-bnb-") as tmp:
            save_float_folder(reference, None, tmp)
            try:
                model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=self.config(),
                                                             device_map=self.device, local_files_only=True)
            except (OSError, ValueError, RuntimeError, ImportError) as exc:
                raise ModelLoadError(f"bnb-config ({self.mode}) could not load the reference quantized: "
                                     f"{type(exc).__name__}: {exc}") from None
        plan = {"name": f"bnb-config-{self.mode}", "format": f"bnb-{self.mode}", "mode": self.mode,
                "double_quant": self.double_quant if self.mode != "int8" else None,
                "llm_int8_threshold": self.threshold if self.mode == "int8" else None,
                "compute_dtype": self.compute_dtype, "skip": list(self.skip)}
        report = manifest_of(reference, model.eval(), backend="bitsandbytes", plan=plan,
                             bits=8 if self.mode == "int8" else 4, group_size=None if self.mode == "int8" else 64,
                             skip=self.skip)
        return BackendVariant(plan["name"], self.name, model, report, time.perf_counter() - start, None,
                              {"config": self.config().to_dict()})
