"""Column roles, row kinds and reference figures."""
from __future__ import annotations

import math

import pytest

from qcheck.lint.precision import bits_from_text, classify
from qcheck.lint.references import find_ppl_reference, params_from_name
from qcheck.lint.roles import assign_roles, infer_role


@pytest.mark.parametrize("name, role", [
    ("ppl", "ppl"), ("Perplexity", "ppl"), ("wikitext_ppl", "ppl"), ("ppl_low", "interval"),
    ("acc", "accuracy"), ("Best Accuracy", "accuracy"), ("clean_acc", "clean_acc"), ("Robust Acc", "robust_acc"),
    ("adv_accuracy", "robust_acc"), ("squad_f1", "f1"), ("exact_match", "em"), ("throughput_tok_s", "throughput"),
    ("tokens_per_s", "throughput"), ("latency_ms", "latency"), ("sec_per_sample", "sample_time"),
    ("processing_time_s", "total_time"), ("energy_mj", "energy"), ("power_w", "power"), ("n", "n"),
    ("num_samples", "n"), ("correct", "correct"), ("num_classes", "num_classes"), ("weight_bits", "bits"),
    ("bits", "bits"), ("sparsity", "sparsity"), ("number", "trial"), ("value", "value"), ("state", "state"),
    ("dataset", "task"), ("model", "model"), ("config", "config"), ("precision", "config"),
    ("context_length", "context_length"), ("params", "params"), ("sample_id", "sample_id"),
])
def test_infer_role(name: str, role: str) -> None:
    assert infer_role(name) == role


def test_unknown_columns_are_metric_or_text() -> None:
    assert infer_role("avg_abs_diff", "numeric") == "metric"
    assert infer_role("notes", "text") == "text"
    assert infer_role("comment", "empty") == "text"
    assert infer_role("response", "empty") == "output"


def test_explicit_roles_win_and_text_metrics_are_demoted() -> None:
    roles = assign_roles({"score": "numeric", "acc": "text", "cfg": "text"}, {"accuracy": "score", "config": "cfg"})
    assert roles == {"score": "accuracy", "acc": "text", "cfg": "config"}


@pytest.mark.parametrize("label, kind, bits", [
    ("FP32", "reference", 32), ("16-bit", "quantized", 16), ("FP16", "half", 16), ("bf16", "half", 16),
    ("Mixed", "mixed", None), ("autocast fp16", "mixed", None), ("Progressive", "other", None),
    ("Qwen3-0.6B-base", "reference", None), ("Qwen3-0.6B-base_gptq_w4g64", "quantized", 4),
    ("Qwen3-0.6B-base_smoothquant_w8a8", "quantized", 8), ("x_NoQuant_awq_w4g128", "quantized", 4),
    ("QAT", "quantized", None), ("baseline", "reference", None), ("l1", "pruned", None), ("int8", "quantized", 8),
    ("Q4_1", "quantized", 4), ("TPE", "other", None),
])
def test_classify_labels(label: str, kind: str, bits: float | None) -> None:
    got = classify(label)
    assert got.kind == kind
    assert (math.isnan(got.bits) if bits is None else got.bits == bits)


def test_cells_override_label_bits_and_sparsity_marks_pruning() -> None:
    assert classify("PTQ", 6.0).bits == 6.0
    assert classify("random", math.nan, 0.5).kind == "pruned"
    assert classify("baseline", math.nan, 0.0).kind == "reference"
    assert classify("method", 32.0).kind == "reference"
    assert math.isnan(bits_from_text("Qwen3-0.6B-openmath_SFT_LoRa64"))


def test_references() -> None:
    assert params_from_name("Qwen3-0.6B-base") == pytest.approx(6e8)
    assert params_from_name("SmolLM2-135M-Instruct") == pytest.approx(1.35e8)
    assert params_from_name("gpt2-medium") == pytest.approx(3.55e8)
    assert math.isnan(params_from_name("mystery"))
    assert find_ppl_reference("gpt2", "WikiText-2").ppl == 29.41
    assert find_ppl_reference("gpt2-large", "wikitext2").model == "gpt2-large"
    assert find_ppl_reference("gpt2", "ptb") is None
