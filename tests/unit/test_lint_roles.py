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
    # names published tables use (issue 17)
    ("tokens/s", "throughput"), ("Tokens/Second", "throughput"), ("Token/sec", "throughput"),
    ("Prefill tokens/s", "throughput"), ("Throughput (tok/s)", "throughput"), ("ms/tok", "latency"),
    ("ms/tok @ 4th", "latency"), ("Time per token in milliseconds for Batch Size 1", "latency"),
    ("Per-token latency (ms)", "latency"), ("FP16 latency (ms)", "latency"), ("A100", "timing"), ("4090", "timing"),
    ("3090Ti", "timing"), ("Wikitext2", "ppl"), ("PTB", "ppl"), ("C4", "ppl"), ("c4(ppl)", "ppl"),
    ("wikitext-perplexity", "ppl"), ("ScienceQA", "score"), ("TextVQA", "score"), ("MMLU (5-shot)", "score"),
    ("AIME 2024", "score"), ("Average", "score"), ("Technique", "config"), ("Method", "config"),
    ("Version", "config"), ("group-size", "qparam"), ("grpsz", "qparam"), ("Alpha", "qparam"),
    ("num_beams", "condition"), ("Batch Size", "batch"), ("GPU", "condition"), ("framework", "condition"),
    ("Hardware", "condition"), ("Prefill Length", "condition"), ("memory(MiB)", "memory"),
    ("Memory (VRAM)", "memory"), ("Model size [GiB]", "memory"), ("Memory Bandwidth (GB/s)", "measure"),
    ("ΔPPL", "measure"), ("KLD", "measure"), ("Mean Δp", "measure"), ("Speedup", "measure"),
    ("Mean PPL(Q)/PPL(base)", "measure"), ("Mean ln(PPL(Q)/PPL(base))", "measure"), ("Load time (s)", "measure"),
    ("Bits Per Weight(BPW)", "bits"), ("bits/weight", "bits"), ("acc_stderr", "interval"),
    ("std err - fp16", "interval"), ("Number of parameters", "params"), ("bits_per_byte", "measure"),
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


def _roles(csv_text: str) -> dict[str, str]:
    from qcheck.lint import LintConfig, table_from_csv_text
    from qcheck.lint.view import build_view

    return build_view(table_from_csv_text(csv_text, "t.csv"), LintConfig()).roles


def test_cells_refine_roles() -> None:
    assert _roles("config,SEED,TextVQA\nFP16,60.9,60.4\nAWQ-INT4,59.8,60.4\n")["SEED"] == "score"
    assert _roles("config,seed,acc\nfp32,0,0.5\nint4,1,0.4\n")["seed"] == "seed"
    assert _roles("Model,Size,4090\nLlama,7B,205 t/s\nLlama,13B,114 t/s\n") == \
        {"Model": "model", "Size": "params", "4090": "throughput"}
    assert _roles("config,A100\nfp16,11.7 ms\nint8,43.5 ms\n")["A100"] == "latency"
    assert _roles("LLaMA-7B,Bits,Wikitext2\nFP16,16,5.68\nRTN,4,6.29\n")["LLaMA-7B"] == "config"


def test_example_column_of_file_names_is_not_sample_ids() -> None:
    files = _roles("Quant type,Example,ppl\nQ4_K_M,llama-2-7b.Q4_K_M.gguf,6.4\nQ8_0,llama-2-7b.Q8_0.gguf,6.2\n")
    assert files["Example"] != "sample_id" and files["ppl"] == "ppl"
    ids = _roles("model,example,correct,acc\nm,1,1,1\nm,2,0,0\nm,3,1,1\n")
    assert ids["example"] == "sample_id"


def test_a_name_column_of_benchmarks_is_the_task() -> None:
    assert _roles("name,config,acc\nhellaswag,int8,0.5\npiqa,int8,0.7\n")["name"] == "task"
