"""lm-eval's WikiText perplexity as a run measurement (issue 19): the engine's record equals `lm_eval_perplexity`
called directly on the pages the record names (reference and a variant); the pages follow the stated rule from the
slice's start within the budget; --text is scored as one document; chunking the output head changes nothing; on CPU
a default run measures the reference only, saying how to get the rest; the suite's check PASSes through pytest and
the reports show `word_perplexity (lm-eval)` / `byte_perplexity (lm-eval)` with the note on why they differ."""
from __future__ import annotations

import json
import math

import pytest

from qcheck.engine import measure_run, open_run
from qcheck.inputs.documents import PAGE_RULE, select_pages, wikitext_documents
from qcheck.measure import lm_eval_compat
from qcheck.measure.budget import CPU_LM_EVAL_TOKENS, not_measured
from qcheck.measure.lm_eval_compat import lm_eval_perplexity
from qcheck.options import RunOptions
from qcheck.records import RecordStatus
from qcheck.report import validate_report
from qcheck.variants import builtin_plan

FIGURES = ("word_perplexity", "byte_perplexity", "bits_per_byte", "loglikelihood")


def _same(a: dict, b: dict) -> None:
    for key in FIGURES:
        assert math.isclose(a[key], b[key], rel_tol=1e-9), (key, a[key], b[key])
    assert [d["id"] for d in a["documents"]] == [d["id"] for d in b["documents"]]


@pytest.mark.parametrize(("first", "budget", "expected"), [
    (0, 10, [0, 1]),          # 4 + 5 fit, 6 would not
    (2, 5, [3]),              # page 2 (6) is passed over, 3 fits, 4 (2) would exceed
    (4, 100, [4, 0, 1, 2, 3]),  # wraps to page 0 after the last, at most every page once
    (0, 1, []),               # no page fits
])
def test_page_selection_rule(first, budget, expected):
    sizes = [4, 5, 6, 4, 2]
    assert select_pages(len(sizes), first, budget, lambda i: sizes[i]) == expected


def test_engine_record_equals_lm_eval_perplexity_on_the_same_pages(smollm2, smollm2_quantized):
    ctx = open_run(RunOptions(variants=("int8",), device="cpu", tokens=512, context=128))
    store = measure_run(ctx, {"fp32": {"lm_eval_perplexity"}, "int8": {"lm_eval_perplexity"}})
    reference, variant = store.find("fp32", "lm_eval_perplexity"), store.find("int8", "lm_eval_perplexity")
    assert reference.ok and variant.ok, (reference.reason, variant.reason)
    settings = reference.settings
    assert settings["rule"] == PAGE_RULE and settings["budget_tokens"] == 512 and settings["start_page"] == 0
    assert settings["pages"] == [28, 29]  # pages 0-27 are longer than 512 tokens; 30 would exceed the budget
    assert settings["tokens"] == reference.data["n_tokens"] == 299
    assert (settings["words"], settings["bytes"]) == (reference.data["n_words"], reference.data["n_bytes"])
    docs = wikitext_documents(select=settings["pages"]).documents
    _same(reference.data, lm_eval_perplexity(smollm2.model, smollm2.tokenizer, docs))
    int8, _ = smollm2_quantized(builtin_plan("int8"))  # the same plan on the same model, built outside the engine
    _same(variant.data, lm_eval_perplexity(int8, smollm2.tokenizer, docs))
    assert reference.data["settings"]["max_length"] == 8192 and reference.data["n_windows"] == 2
    assert variant.data["word_perplexity"] != reference.data["word_perplexity"]


def test_the_pages_start_at_the_slice(tiny_folder):
    ctx = open_run(RunOptions(model=str(tiny_folder), variants=("int8",), device="cpu", tokens=4096, context=128,
                              data_slice=3))
    settings = measure_run(ctx, {"fp32": {"lm_eval_perplexity"}}).find("fp32", "lm_eval_perplexity").settings
    assert settings["slice_offset_tokens"] == 3 * 4096 and settings["slice_offset_chars"] > 0
    assert settings["budget_tokens"] == CPU_LM_EVAL_TOKENS  # --tokens 4096, at most 2,048 on CPU
    assert settings["start_page"] == 3 and settings["pages"][0] >= 3 and settings["tokens"] <= CPU_LM_EVAL_TOKENS


def test_a_text_file_is_scored_as_one_document(tiny_folder, tmp_path, wikitext_slice):
    path = tmp_path / "mine.txt"
    path.write_text(wikitext_slice)
    ctx = open_run(RunOptions(model=str(tiny_folder), variants=("int8",), device="cpu", tokens=512, context=128,
                              text=str(path)))
    record = measure_run(ctx, {"fp32": {"lm_eval_perplexity"}}).find("fp32", "lm_eval_perplexity")
    assert record.ok and record.data["n_documents"] == 1
    assert "--text slice as one document (not WikiText-2)" in record.settings["documents"]
    assert record.settings["path"] == str(path) and record.data["n_tokens"] == record.settings["tokens"]


def test_chunked_head_gives_the_plain_figures(tiny_folder, monkeypatch):
    """HEAD_CHUNK positions' logits at a time, from head(decoder(ids)), equal the model's own full logits."""
    from qcheck.inputs.models import load_model

    loaded = load_model(str(tiny_folder), cache=True)
    docs = wikitext_documents(select=[0, 14]).documents
    assert lm_eval_compat.split_head(loaded.model, [1, 2, 3]) is not None
    monkeypatch.setattr(lm_eval_compat, "HEAD_CHUNK", 100)  # 512-token windows in 6 chunks
    chunked = lm_eval_perplexity(loaded.model, loaded.tokenizer, docs, lm_eval_compat.RollingSettings(max_length=512))
    monkeypatch.setattr(lm_eval_compat, "HEAD_CHUNK", 10**9)
    monkeypatch.setattr(lm_eval_compat, "split_head", lambda model, probe: None)
    plain = lm_eval_perplexity(loaded.model, loaded.tokenizer, docs, lm_eval_compat.RollingSettings(max_length=512))
    for key in FIGURES:
        assert math.isclose(chunked[key], plain[key], rel_tol=1e-6), (key, chunked[key], plain[key])


def test_a_model_that_scales_its_logits_after_the_head_is_scored_from_its_own_logits(tiny_folder):
    """Like Gemma's soft-capping or Cohere's logit scale: head(decoder(ids)) is not the model's logits."""
    from qcheck.inputs.models import load_model

    model = load_model(str(tiny_folder), cache=True).model

    def scale(module, args, output):
        output.logits = output.logits * 0.5
        return output

    hook = model.register_forward_hook(scale)
    try:
        assert lm_eval_compat.split_head(model, [1, 2, 3]) is None
    finally:
        hook.remove()
    assert lm_eval_compat.split_head(model, [1, 2, 3]) is not None


def test_cpu_default_run_measures_the_reference_and_added_variants_only():
    default, named = RunOptions(), RunOptions(variants=("int8",))
    assert not_measured("lm_eval_perplexity", "fp32", gpu=False, options=default, context=1024) is None
    reason = not_measured("lm_eval_perplexity", "int8", gpu=False, options=default, context=1024)
    assert "name int8 in --variants or run on a GPU" in reason
    assert not_measured("lm_eval_perplexity", "int8", gpu=False, options=named, context=1024) is None
    assert not_measured("lm_eval_perplexity", "my-plan", gpu=False, options=default, context=1024) is None
    assert not_measured("lm_eval_perplexity", "bf16", gpu=True, options=default, context=1024) is None


def test_the_suite_check_passes_and_the_reports_name_lm_eval_figures(pytester, tmp_path, tiny_folder):
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-variants=int8", "--qcheck-device=cpu", "--qcheck-tokens=512", "--qcheck-context=128",
        f"--qcheck-report={out}", "-k", "lm_eval_perplexity")
    result.assert_outcomes(passed=2)
    report = json.loads((out / "qcheck-report.json").read_text())
    validate_report(report)
    checks = {c["variant"]: c for c in report["checks"] if c["name"] == "lm_eval_perplexity"}
    assert {v: c["status"] for v, c in checks.items()} == {"fp32": "PASS", "int8": "PASS"}
    assert "qcheck's perplexity of int8" in checks["int8"]["message"]
    taken = {(r["variant"], r["measurement"]) for r in report["records"]["records"] if r["status"] == "ok"}
    assert {("fp32", "lm_eval_perplexity"), ("fp32", "perplexity"), ("int8", "lm_eval_perplexity"),
            ("int8", "perplexity")} <= taken
    metric = report["variants"]["int8"]["metrics"]["word_perplexity (lm-eval)"]
    assert metric["value"] == checks["int8"]["evidence"]["lm_eval"]["word_perplexity"] and metric["unit"] == "word"
    markdown = (out / "qcheck-report.md").read_text()
    assert "| perplexity | word_perplexity (lm-eval) | byte_perplexity (lm-eval) |" in markdown
    assert "They differ from qcheck's perplexity on purpose: qcheck perplexity scores the text" in markdown
    html = (out / "qcheck-report.html").read_text()
    assert "<th>byte_perplexity (lm-eval)</th>" in html and "They differ from qcheck&#x27;s perplexity" in html


def test_a_cpu_default_run_skips_builtin_variants_without_measuring_their_perplexity(pytester, tmp_path,
                                                                                     tiny_folder):
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite.test_perplexity", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-device=cpu", "--qcheck-tokens=512", "--qcheck-context=128", f"--qcheck-report={out}",
        "-k", "lm_eval_perplexity")
    result.assert_outcomes(passed=1, skipped=9)
    report = json.loads((out / "qcheck-report.json").read_text())
    records = report["records"]["records"]
    assert {r["variant"] for r in records if r["measurement"] == "perplexity"} == {"fp32"}
    skipped = [r for r in records if r["measurement"] == "lm_eval_perplexity" and r["status"] == "skipped"]
    assert len(skipped) == 9 and all("in --variants or run on a GPU" in r["reason"] for r in skipped)
    assert all(r["status"] == RecordStatus.SKIPPED.value for r in skipped)
