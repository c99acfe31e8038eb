"""GPTQ / AWQ / SmoothQuant-W8A8 through llm-compressor's `oneshot`, saved as a compressed-tensors checkpoint.

The reference is saved as a float folder and reloaded: `oneshot` works on that fresh copy (and re-reads the
folder's config.json while it runs, so the folder must outlive the call) (it mutates what it
is given), writes a `pack-quantized` / `int-quantized` checkpoint, and the variant is that folder reloaded
through transformers — the path a user's published model takes. llm-compressor pins its transformers range,
so it is an optional extra tried in its own environment (docs/ptq.md).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from qcheck.errors import ConfigError, require
from qcheck.inputs.calibration import CalibrationSpec, build_calibration
from qcheck.quant.backends import BackendVariant, save_float_folder
from qcheck.quant.backends.checkpoint import CheckpointBackend

ALGORITHMS = ("gptq", "awq", "smoothquant-w8a8")


@dataclass
class LLMCompressorBackend:
    """One llm-compressor recipe (gptq / awq: weight-only int, smoothquant-w8a8: int8 weights and activations)."""

    algorithm: str = "gptq"
    bits: int = 4
    group_size: int | None = 64
    symmetric: bool = True
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    ignore: tuple[str, ...] = ("lm_head",)
    smoothing_strength: float = 0.8
    output_dir: str | None = None
    device: str = "cpu"
    name: str = "llmcompressor"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"llm-compressor algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}",
                              field="algorithm")
        if isinstance(self.calibration, dict):
            self.calibration = CalibrationSpec(**self.calibration)
        if self.algorithm == "smoothquant-w8a8":
            self.bits, self.group_size = 8, None

    @property
    def variant_name(self) -> str:
        group = f"g{self.group_size}" if self.group_size else "pc"
        base = "w8a8-sq" if self.algorithm == "smoothquant-w8a8" else f"{self.algorithm}-w{self.bits}{group}"
        return f"{base}-{self.calibration.source}"

    def unavailable_reason(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("llmcompressor") is None:
            return ("the package 'llmcompressor' is not installed (it pins transformers<=5.17; install it in its "
                    "own environment, see docs/ptq.md)")
        return None

    def check_shapes(self, model: nn.Module) -> None:
        """Refuse a group size that does not divide every targeted layer's input width (llm-compressor would)."""
        if not self.group_size:
            return
        bad = sorted({m.in_features for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and n not in self.ignore and m.in_features % self.group_size})
        if bad:
            raise ConfigError(f"group_size {self.group_size} does not divide input widths {bad}", field="group_size")

    def recipe(self) -> list[Any]:
        """The llm-compressor modifiers for this algorithm."""
        weights = {"num_bits": self.bits, "type": "int", "symmetric": self.symmetric,
                   "strategy": "group" if self.group_size else "channel"}
        if self.group_size:
            weights["group_size"] = self.group_size
        group: dict[str, Any] = {"targets": ["Linear"], "weights": weights}
        if self.algorithm == "gptq":
            from llmcompressor.modifiers.quantization import GPTQModifier

            return [GPTQModifier(config_groups={"group_0": group}, ignore=list(self.ignore))]
        if self.algorithm == "awq":
            from llmcompressor.modifiers.awq import AWQModifier

            weights["symmetric"] = False
            return [AWQModifier(config_groups={"group_0": group}, ignore=list(self.ignore))]
        from llmcompressor.modifiers.quantization import GPTQModifier
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=self.smoothing_strength),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=list(self.ignore))]

    def produce(self, reference: nn.Module, tokenizer: Any) -> BackendVariant:
        require("llmcompressor", f"the llm-compressor backend ({self.algorithm})", extra="ptq")
        from llmcompressor import oneshot
        from transformers import AutoModelForCausalLM

        self.check_shapes(reference)
        calib = build_calibration(tokenizer, self.calibration)
        out = Path(self.output_dir or tempfile.mkdtemp(prefix=f"qcheck-{self.variant_name}-"))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="qcheck-float-") as tmp:
            save_float_folder(reference, tokenizer, tmp)
            working = AutoModelForCausalLM.from_pretrained(tmp, local_files_only=True, dtype="auto")
            oneshot(model=working, dataset=calib.to_dataset(), recipe=self.recipe(), processor=tokenizer,
                    max_seq_length=self.calibration.seq_len, num_calibration_samples=len(calib.input_ids))
            calibrate_s = time.perf_counter() - start
            working.save_pretrained(out, save_compressed=True)
            tokenizer.save_pretrained(out)
            del working
        loaded = CheckpointBackend(str(out), self.variant_name, self.device).produce(reference, tokenizer)
        loaded.backend = self.name
        loaded.report.backend = f"llmcompressor:{self.algorithm}"
        loaded.details.update({"calibration": calib.describe(), "calibrate_seconds": calibrate_s,
                               "checkpoint_mb": sum(f.stat().st_size for f in out.glob("*.safetensors")) / 1e6})
        loaded.seconds = time.perf_counter() - start
        return loaded
