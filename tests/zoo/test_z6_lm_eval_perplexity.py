"""Z6 in lm-eval's units (issue 19): a run's `word_perplexity` / `byte_perplexity` / `bits_per_byte` must be what
lm-eval's definitions give from the log-likelihood, words, bytes, tokens and windows recorded with them. Bugs planted
in a real record of SmolLM2 (bits per byte in nats, a "word" perplexity per token, words and bytes swapped, windows
of qcheck's context instead of the model's max_length, a log-likelihood stored as its negative, NaN logits) each
FAIL, naming what is wrong; the real record PASSes with qcheck's token perplexity beside it and the definitional
differences named."""
import copy
import math

import pytest

from qcheck.errors import DataError, InvariantViolation
from qcheck.invariants.quality import judge_lm_eval_perplexity
from qcheck.measure.lm_eval_compat import QCHECK_DIFFERENCES, lm_eval_perplexity
from qcheck.measure.perplexity import NonFiniteError, perplexity_of_ids
from qcheck.records import Record, RecordStatus

PAGES = [28, 29]   # 31 and 268 SmolLM2 tokens: cheap, and two documents so per-document sums are tested


@pytest.fixture(scope="module")
def documents():
    from qcheck.inputs.documents import wikitext_documents

    try:
        return wikitext_documents(select=PAGES)
    except DataError as exc:
        pytest.skip(f"WikiText-2 not available: {exc}")


@pytest.fixture(scope="module")
def measured(smollm2, documents):
    """The real lm_eval_perplexity record data of the reference on the pages, and qcheck's perplexity of its text."""
    data = lm_eval_perplexity(smollm2.model, smollm2.tokenizer, documents.documents)
    ids = smollm2.tokenizer("\n".join(d.text for d in documents.documents), add_special_tokens=False)["input_ids"]
    return data, perplexity_of_ids(smollm2.model, ids, context=128, pad_id=smollm2.tokenizer.pad_token_id)


def record(data, settings=None):
    return Record("fp32", "lm_eval_perplexity", RecordStatus.OK, data=data,
                  settings=settings or {"documents": "WikiText-2 test pages", "pages": PAGES})


def planted(data, **changes):
    out = copy.deepcopy(data)
    out.update(changes)
    return out


def fails(data, fragment):
    with pytest.raises(InvariantViolation) as err:
        judge_lm_eval_perplexity(record(data), None, variant="fp32")
    result = err.value.result
    assert result.status.value == "FAIL" and result.name == "lm_eval_perplexity"
    assert fragment in result.message, result.message
    return result


def test_the_real_record_passes_beside_qcheck_perplexity(measured):
    data, ours = measured
    result = judge_lm_eval_perplexity(record(data), ours, variant="fp32")
    assert result.status.value == "PASS"
    assert f"word_perplexity {data['word_perplexity']:.4f}" in result.message
    assert f"byte_perplexity {data['byte_perplexity']:.4f}" in result.message
    assert f"qcheck's perplexity of fp32 {ours.perplexity:.4f} per token (context 128" in result.message
    assert all(d in result.message for d in QCHECK_DIFFERENCES)
    assert "pages [28, 29]" in result.message and result.n == data["n_tokens"] == 299
    assert 1 < data["byte_perplexity"] < data["word_perplexity"]


def test_bits_per_byte_in_nats_fails(measured):
    data, _ = measured
    fails(planted(data, bits_per_byte=math.log(data["byte_perplexity"])), "is not log2(byte_perplexity)")


def test_a_word_perplexity_per_token_fails(measured):
    data, _ = measured
    per_token = math.exp(-data["loglikelihood"] / data["n_tokens"])
    fails(planted(data, word_perplexity=per_token), "word_perplexity")
    fails(planted(data, word_perplexity=per_token), "is not exp(-loglikelihood / words)")


def test_words_and_bytes_swapped_fails(measured):
    data, _ = measured
    swapped = planted(data, word_perplexity=data["byte_perplexity"], byte_perplexity=data["word_perplexity"],
                      bits_per_byte=math.log2(data["word_perplexity"]))
    result = fails(swapped, "byte_perplexity")
    assert "although the pages hold more bytes (1459) than words (277)" in result.message


def test_windows_of_qcheck_context_instead_of_max_length_fail(measured):
    data, _ = measured
    broken = copy.deepcopy(data)
    for doc in broken["documents"]:
        doc["windows"] = math.ceil(doc["tokens"] / 128)
    broken["n_windows"] = sum(d["windows"] for d in broken["documents"])
    fails(broken, "windows do not score each token once at max_length 8192")


def test_a_loglikelihood_stored_as_its_negative_fails(measured):
    data, _ = measured
    result = fails(planted(data, loglikelihood=-data["loglikelihood"]), "a sum of log-probabilities cannot exceed 0")
    assert "is not the sum of its 2 documents' loglikelihood" in result.message


def test_a_non_finite_figure_fails(measured):
    data, _ = measured
    fails(planted(data, word_perplexity=float("nan")), "not finite: word_perplexity is nan")


def test_nan_logits_fail_the_check(smollm2, documents):
    """A model whose output head gives NaN: the measurement stops with NonFiniteError; the check FAILs on it."""
    hook = smollm2.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out * float("nan"))
    try:
        with pytest.raises(NonFiniteError) as err:
            lm_eval_perplexity(smollm2.model, smollm2.tokenizer, documents.documents)
    finally:
        hook.remove()
    failed = Record("fp32", "lm_eval_perplexity", RecordStatus.ERROR, reason=f"NonFiniteError: {err.value}",
                    data={"error_type": "NonFiniteError"})
    with pytest.raises(InvariantViolation) as judged:
        judge_lm_eval_perplexity(failed, None, variant="fp32")
    assert "not finite: NonFiniteError: non-finite log-likelihood for documents" in judged.value.result.message


def test_a_bf16_records_rounding_step_is_stated_where_a_variant_prints_the_references_figure(smollm2, documents):
    """lm-eval keeps a bf16 model's window sums in bf16 (8 significant bits): SmolLM2 in bf16 and its int8 variant
    can print the very same word_perplexity, which reads like an unquantized variant (Z1). The PASS says the step,
    measured from the record, and that qcheck's own perplexity resolves them; an fp32 record says nothing of it."""
    import torch

    from qcheck.invariants.quality import window_sum_step
    from qcheck.quant.apply import quantize
    from qcheck.variants import builtin_plan

    reference = copy.deepcopy(smollm2.model).to(torch.bfloat16)
    int8, _ = quantize(reference, builtin_plan("int8"))
    data = {n: lm_eval_perplexity(m, smollm2.tokenizer, documents.documents) for n, m in
            (("fp32", reference), ("int8", int8))}
    largest = max(abs(d["loglikelihood"]) / d["windows"] for d in data["int8"]["documents"])
    step = window_sum_step(data["int8"])
    assert step == 2.0 ** (math.floor(math.log2(largest)) - 7) and step >= 1.0
    assert all(abs(d["loglikelihood"]) % step == 0 for d in data["int8"]["documents"])  # on bf16's grid
    result = judge_lm_eval_perplexity(record(data["int8"]), None, variant="int8")
    assert result.status.value == "PASS" and result.evidence["window_sum_step_nats"] == step
    assert f"kept in bfloat16: steps of {step:g} nats here" in result.message
    assert "qcheck's perplexity above resolves them" in result.message
    assert window_sum_step(lm_eval_perplexity(smollm2.model, smollm2.tokenizer, documents.documents)) is None
