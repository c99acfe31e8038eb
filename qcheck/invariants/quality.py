"""Language-model quality invariants: perplexity ordering and context sanity (Z6), perplexity claims checked
against the pooled figure, `\\boxed{}` compliance of quantized vs reference outputs (Z7), accuracy collapse to
chance and differences the data cannot resolve (Z11), summaries recomputable from their records (Z8).

Each function returns a CheckResult saying what was compared, on how many samples, with which test and
threshold; FAIL/ERROR raise InvariantViolation; too little data gives INCONCLUSIVE (or WARN), never a
silent pass. Re-exported from qcheck.invariants.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qcheck.errors import ConfigError, DataError
from qcheck.invariants.aggregate import check_summary
from qcheck.measure.boxed import BoxStatus, extract_boxed
from qcheck.measure.choice import MCResult
from qcheck.measure.generation import Generation, GenerationRun
from qcheck.measure.perplexity import PerplexityResult
from qcheck.results import CheckResult, Status, raise_if_failed
from qcheck.stats import MIN_SAMPLES, binomial_test, bootstrap_interval, mcnemar_exact, samples_needed, wilson_interval

ORDER_TOLERANCE = 0.002
"""Nats per token a lower-bit variant may beat a higher-bit one by before the ordering counts as violated."""
MAX_EMPTY_FRACTION = 0.10
"""Largest fraction of empty outputs a variant may return (and never more than the reference plus this)."""
SEED_002 = "seed 002's symptoms"



# ---------------------------------------------------------------- perplexity

def paired_blocks(a: PerplexityResult, b: PerplexityResult) -> tuple[np.ndarray, np.ndarray]:
    """Per-block NLL/token difference (b - a) on the blocks both scored, and each block's weight (the tokens a
    scored there): the paired units of every perplexity comparison."""
    if not a.block_index or not b.block_index:
        raise DataError("perplexity results carry no per-block NLL (measure them with qcheck.measure.perplexity)")
    if a.block_size != b.block_size:
        raise DataError(f"perplexities blocked differently ({a.block_size} vs {b.block_size} tokens)")
    first = dict(zip(a.block_index, zip(a.block_nll, a.block_tokens)))
    diffs, weights = [], []
    for k, nll, tokens in zip(b.block_index, b.block_nll, b.block_tokens):
        if k in first and tokens > 0 and first[k][1] > 0:
            diffs.append(nll / tokens - first[k][0] / first[k][1])
            weights.append(float(first[k][1]))
    if not diffs:
        raise DataError("the two perplexities share no scored block of tokens (compare them on the same text)")
    return np.asarray(diffs), np.asarray(weights)


def _paired_nll_difference(a: PerplexityResult, b: PerplexityResult, level: float) -> tuple[Any, int, str]:
    """Interval of mean NLL/token (b - a) on the tokens both scored: a token-weighted bootstrap over blocks of
    `a.block_size` text positions. Returns (interval, units, unit name)."""
    if a.n_ids is not None and b.n_ids is not None and a.n_ids != b.n_ids:
        raise DataError(f"the two perplexities were computed on different texts ({a.n_ids} vs {b.n_ids} tokens)")
    diffs, weights = paired_blocks(a, b)
    return (bootstrap_interval(diffs, level=level, weights=weights), len(diffs),
            f"blocks of {a.block_size} tokens")


def no_better_than_uniform(perplexity: float, vocab_size: int | None) -> bool:
    """Whether a perplexity is at or above the vocabulary size, what a uniform guess over it scores: such a model
    (random or broken weights) predicts nothing about the text, so orders among its variants, or between its
    contexts, are quantization or sampling noise, not findings. False when the vocabulary is not known."""
    return bool(vocab_size) and perplexity >= float(vocab_size)


def assert_perplexity_order(results: Mapping[str, PerplexityResult], *, family: str = "",
                            tolerance: float = ORDER_TOLERANCE, level: float = 0.95,
                            vocab_size: int | None = None) -> CheckResult:
    """Perplexity does not go down as bits go down along `results` (ordered from more to fewer bits), beyond
    a bootstrap interval over blocks of tokens and `tolerance` nats/token; identical figures fail (Z1). With
    `vocab_size`, an order broken on a first model (the reference) that predicts no better than a uniform guess
    (perplexity >= vocab_size) is INCONCLUSIVE: such a model carries nothing about the text for fewer bits to lose,
    and quantization noise moves its perplexity either way (random-init Mixtral: fixed8.4 0.5% below fixed16.8)."""
    names = list(results)
    if len(names) < 2:
        raise ConfigError(f"an ordering needs at least two variants, got {names}", field="variants")
    pairs: dict[str, Any] = {}
    problems = []
    units = 0
    identical = []
    for hi, lo in itertools.pairwise(names):
        a, b = results[hi], results[lo]
        interval, units, unit = _paired_nll_difference(a, b, level)
        key = f"{hi} -> {lo}"
        pairs[key] = {"ppl": [a.perplexity, b.perplexity], "ratio": b.perplexity / a.perplexity,
                      "nll_per_token_difference": interval.to_dict(), "units": units, "unit": unit}
        if round(a.perplexity, 10) == round(b.perplexity, 10):
            identical.append(f"{hi} and {lo} have identical perplexity {a.perplexity:.10f}: one of them was not "
                             "quantized as its plan says")
        elif interval.high < -tolerance:
            problems.append(f"{lo} ({b.perplexity:.4f}) has lower perplexity than {hi} ({a.perplexity:.4f}) with "
                            f"fewer bits, beyond noise (NLL/token difference {interval.estimate:+.4f}, "
                            f"{level:.0%} interval [{interval.low:+.4f}, {interval.high:+.4f}])")
    chain = " <= ".join(f"{n} {results[n].perplexity:.3f}" for n in names)
    first = results[names[0]].perplexity
    uninformed = no_better_than_uniform(first, vocab_size)
    if identical or (problems and not uninformed):
        status, message = Status.FAIL, "; ".join(identical + problems)
    elif problems:
        status = Status.INCONCLUSIVE
        message = (f"{'; '.join(problems)}; but {names[0]}'s perplexity {first:.1f} is not below its vocabulary's "
                   f"{vocab_size} tokens, what a uniform guess scores: a model that predicts the text no better than "
                   "chance has nothing for fewer bits to lose, and quantization noise moves its perplexity either "
                   "way (random or broken weights), so bits cannot order it")
    else:
        status, message = Status.PASS, f"perplexity non-decreasing as bits go down: {chain} (within noise)"
    return raise_if_failed(CheckResult(
        name="perplexity_order", status=status, message=message, variant=family or None, n=units,
        compared=f"perplexity along {' -> '.join(names)} on the same tokens",
        test=f"paired block bootstrap of NLL/token differences ({level:.0%} interval)",
        threshold={"violated_when": "interval high < -tolerance", "tolerance_nats_per_token": tolerance,
                   "identical_decimals": 10, "inconclusive_when": "first perplexity >= vocabulary size"},
        evidence={"pairs": pairs, "context": results[names[0]].context, "stride": results[names[0]].stride,
                  "vocab_size": vocab_size}))


def judge_perplexity_finite(record: Any, *, variant: str) -> CheckResult:
    """The variant's perplexity is a finite number (a NaN/inf logit anywhere makes it infinite): from the perplexity
    record, whose measurement stops with a NonFiniteError when the NLL is not finite."""
    from qcheck.records import MeasurementError, RecordStatus

    if record is None:
        raise DataError(f"no perplexity record for {variant}")
    if record.status == RecordStatus.ERROR and record.data.get("error_type") != "NonFiniteError":
        raise MeasurementError(record)
    if record.status == RecordStatus.SKIPPED:
        return CheckResult("perplexity_finite", Status.SKIPPED, record.reason, variant=variant)
    ok = record.status == RecordStatus.OK
    result = PerplexityResult.from_dict(record.data) if ok else None
    message = (f"perplexity {result.perplexity:.4f} over {result.n_tokens} tokens (context {result.context}, "
               f"stride {result.stride})" if ok else f"perplexity is not finite: {record.reason}")
    return raise_if_failed(CheckResult(
        name="perplexity_finite", status=Status.PASS if ok else Status.FAIL, variant=variant, message=message,
        compared="token-weighted strided perplexity", n=result.n_tokens if ok else None, test="finite",
        threshold="finite", evidence=result.to_dict(with_windows=False) if ok else {"reason": record.reason}))


def assert_context_sensitivity(short: PerplexityResult, full: PerplexityResult, *, level: float = 0.95,
                               variant: str | None = None, vocab_size: int | None = None) -> CheckResult:
    """Perplexity at a short context is higher than at the model's full context on the same tokens; the
    report states by how much, so a 128-token figure (seed 001's 217) is never compared with a full one. With
    `vocab_size`, a short context that scores better where both figures are no better than a uniform guess
    (perplexity >= vocab_size) is INCONCLUSIVE, not a broken mask: such a model predicts nothing from any context
    (a random-init Llama of hidden 1024: 0.96x, session 28)."""
    if short.context >= full.context:
        raise ConfigError(f"short context ({short.context}) must be below the full context ({full.context})",
                          field="context")
    interval, units, unit = _paired_nll_difference(full, short, level)
    ratio = short.perplexity / full.perplexity
    evidence = {"short": short.to_dict(), "full": full.to_dict(), "ratio": ratio,
                "nll_per_token_short_minus_full": interval.to_dict(), "units": units, "unit": unit}
    head = (f"perplexity {short.perplexity:.3f} at context {short.context} vs {full.perplexity:.3f} at context "
            f"{full.context} on the same text ({ratio:.2f}x)")
    if interval.low > 0:
        status = Status.PASS
        message = (f"{head}: less context, higher perplexity, as it must be. Perplexities are comparable only at "
                   "the same context and stride (a 128-token context explains figures like seed 001's 217)")
    elif interval.high < 0 and no_better_than_uniform(min(short.perplexity, full.perplexity), vocab_size):
        status = Status.INCONCLUSIVE
        message = (f"{head}: the short context scores better beyond noise, but neither figure is below the "
                   f"vocabulary's {vocab_size} tokens, what a uniform guess scores: a model that predicts the text no "
                   "better than chance uses no context to judge (random or broken weights)")
    elif interval.high < 0:
        status = Status.FAIL
        message = (f"{head}: the short context scores better beyond noise, so the model does not use its context "
                   "(broken attention mask, positions or windowing)")
    else:
        status = Status.INCONCLUSIVE
        message = f"{head}: the difference is within noise ({units} {unit}); use more tokens"
    return raise_if_failed(CheckResult(
        name="context_sensitivity", status=status, message=message, variant=variant, n=units,
        compared=f"perplexity at context {short.context} vs {full.context} on the tokens both score",
        test=f"paired block bootstrap of NLL/token differences ({level:.0%} interval)",
        threshold={"passes_when": "interval of (short - full) above 0", "fails_when": "interval below 0",
                   "inconclusive_when": "both perplexities >= vocabulary size, or the interval holds 0"},
        evidence={**evidence, "vocab_size": vocab_size}))


def perplexity_variants(result: PerplexityResult) -> dict[str, float]:
    """The pooled perplexity and the figures known aggregation mistakes give on the same windows."""
    ppl_w = [math.exp(n / t) for n, t in zip(result.window_nll, result.window_tokens)]
    return {"pooled": result.perplexity,
            "mean_of_window_perplexities": float(np.mean(ppl_w)),
            "exp_of_unweighted_mean_window_nll": math.exp(float(np.mean(
                [n / t for n, t in zip(result.window_nll, result.window_tokens)])))}


_MISTAKES = {"mean_of_window_perplexities": "averaging per-window perplexities instead of pooling NLL over tokens",
             "exp_of_unweighted_mean_window_nll": "averaging per-window mean NLLs without weighting by token count"}


def assert_perplexity_claim(claimed: float, result: PerplexityResult, *, claimed_context: int | None = None,
                            rel_tol: float = 1e-4, variant: str | None = None) -> CheckResult:
    """A published perplexity equals qcheck's pooled figure on the same text; if not, name the known mistake
    it matches (per-window averaging) or the context it was measured at."""
    candidates = perplexity_variants(result)
    rel = {k: abs(claimed - v) / v for k, v in candidates.items()}
    evidence: dict[str, Any] = {"claimed": claimed, "candidates": candidates, "relative_difference": rel,
                                "context": result.context, "stride": result.stride, "n_tokens": result.n_tokens}
    if not math.isfinite(claimed):
        status, message = Status.FAIL, f"claimed perplexity {claimed} is not a finite number"
    elif rel["pooled"] <= rel_tol:
        status, message = Status.PASS, (f"claimed {claimed:.4f} matches the pooled perplexity {result.perplexity:.4f} "
                                         f"(context {result.context}, stride {result.stride})")
    else:
        match = next((k for k in _MISTAKES if rel[k] <= rel_tol), None)
        message = (f"claimed perplexity {claimed:.4f} differs from the pooled {result.perplexity:.4f} on the same "
                   f"{result.n_tokens} tokens by {rel['pooled']:.2%}")
        if match:
            message += f": it equals {candidates[match]:.4f}, the result of {_MISTAKES[match]}"
        elif claimed_context is not None and claimed_context != result.context:
            message += (f": it was measured at context {claimed_context}, qcheck's at {result.context}; "
                        "compare at the same context")
        else:
            message += (": known causes: padding scored, labels not shifted, a different context, stride, "
                        "tokenizer or text")
        status = Status.FAIL
        evidence["matches"] = match
    return raise_if_failed(CheckResult(
        name="perplexity_claim", status=status, message=message, variant=variant, n=result.n_tokens,
        compared="claimed perplexity vs pooled exp(sum NLL / scored tokens) on the same text",
        test="relative difference", threshold={"rel_tol": rel_tol}, evidence=evidence))


# ---------------------------------------------------------------- lm-eval's document perplexity

LM_EVAL_IDENTITY_TOL = 1e-9
"""Relative tolerance of the identities that tie lm-eval's figures to the log-likelihood and counts in the same
record: both are computed from them in float64, so only a wrong formula or a damaged record misses it."""
LM_EVAL_FIGURES = ("word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity", "loglikelihood")


def _off(a: float, b: float) -> bool:
    """Whether a and b differ by more than LM_EVAL_IDENTITY_TOL relative (of the larger magnitude, at least 1)."""
    return not math.isclose(a, b, rel_tol=LM_EVAL_IDENTITY_TOL, abs_tol=LM_EVAL_IDENTITY_TOL)


def _lm_eval_problems(data: dict[str, Any]) -> list[str]:
    """What makes an lm-eval perplexity record impossible: non-finite figures, a log-likelihood above 0, figures
    that are not their definitions of the recorded log-likelihood and counts, per-document parts that do not add
    up, windows that do not score each token once at the recorded max_length."""
    missing = [k for k in (*LM_EVAL_FIGURES[:3], "loglikelihood", "n_words", "n_bytes", "n_tokens") if k not in data]
    if missing:
        return [f"the record lacks {', '.join(missing)}"]
    bad = [f"{k} is {data.get(k)!r}" for k in LM_EVAL_FIGURES
           if k in data and not (isinstance(data[k], (int, float)) and math.isfinite(data[k]))]
    if bad:
        return [f"not finite: {', '.join(bad)}"]
    ll, words, n_bytes, tokens = data["loglikelihood"], data["n_words"], data["n_bytes"], data["n_tokens"]
    problems = []
    if ll > 0:
        problems.append(f"log-likelihood {ll:.6g} > 0: a sum of log-probabilities cannot exceed 0")
    docs = data.get("documents") or []
    for key, part in (("loglikelihood", "loglikelihood"), ("n_words", "words"), ("n_bytes", "bytes"),
                      ("n_tokens", "tokens"), ("n_windows", "windows")):
        total = sum(d.get(part, 0) for d in docs)
        if not math.isfinite(total) or _off(data.get(key, 0), total):
            problems.append(f"{key} {data.get(key)} is not the sum of its {len(docs)} documents' {part} ({total})")
    if data.get("n_documents") != len(docs):
        problems.append(f"n_documents {data.get('n_documents')} but {len(docs)} documents recorded")
    for key, count, unit in (("word_perplexity", words, "words"), ("byte_perplexity", n_bytes, "bytes"),
                             ("token_perplexity", tokens, "tokens")):
        if key in data and count > 0 and _off(data[key], math.exp(-ll / count)):
            problems.append(f"{key} {data[key]:.6g} is not exp(-loglikelihood / {unit}) = "
                            f"exp({-ll:.6g} / {count}) = {math.exp(-ll / count):.6g}")
    if _off(data["bits_per_byte"], math.log2(data["byte_perplexity"])):
        problems.append(f"bits_per_byte {data['bits_per_byte']:.6g} is not log2(byte_perplexity) = "
                        f"{math.log2(data['byte_perplexity']):.6g}")
    if n_bytes >= words and data["byte_perplexity"] > data["word_perplexity"] * (1 + LM_EVAL_IDENTITY_TOL):
        problems.append(f"byte_perplexity {data['byte_perplexity']:.6g} > word_perplexity "
                        f"{data['word_perplexity']:.6g} although the pages hold more bytes ({n_bytes}) than words "
                        f"({words})")
    max_length = (data.get("settings") or {}).get("max_length")
    if max_length:
        wrong = [f"{d.get('id')}: {d.get('windows')} windows for {d.get('tokens')} tokens"
                 for d in docs if d.get("windows") != math.ceil(d.get("tokens", 0) / max_length)]
        if wrong:
            problems.append(f"windows do not score each token once at max_length {max_length} "
                            f"(ceil(tokens / max_length) each): {'; '.join(wrong[:3])}")
    return problems


def _qcheck_side(perplexity: PerplexityResult | None, variant: str) -> str:
    """qcheck's own figure of the same subject, as the PASS message states it."""
    if perplexity is None:
        return f"qcheck's perplexity of {variant} is not in this run's records"
    return (f"qcheck's perplexity of {variant} {perplexity.perplexity:.4f} per token (context {perplexity.context}, "
            f"stride {perplexity.stride}, {perplexity.n_tokens} tokens of the run's slice)")


def window_sum_step(data: dict[str, Any]) -> float | None:
    """The rounding step of lm-eval's per-window log-likelihood sums where it keeps them in a 16-bit dtype
    (`round_window_sums` on a bf16/fp16 model): the spacing of that dtype at the largest window sum, in nats; None
    where sums are exact enough to ignore (fp32 models, or the rounding turned off)."""
    import torch

    settings = data.get("settings") or {}
    dtype = getattr(torch, str(settings.get("softmax_dtype") or settings.get("model_dtype")), None)
    if not settings.get("round_window_sums") or dtype not in (torch.bfloat16, torch.float16):
        return None
    sums = [abs(d["loglikelihood"]) / max(1, d.get("windows") or 1) for d in data.get("documents") or ()
            if d.get("loglikelihood")]
    if not sums or max(sums) <= 0:
        return None
    return 2.0 ** math.floor(math.log2(max(sums))) * torch.finfo(dtype).eps


def judge_lm_eval_perplexity(record: Any, perplexity: PerplexityResult | None, *, variant: str) -> CheckResult:
    """lm-eval's document perplexity of a subject (`word_perplexity`, `byte_perplexity`, `bits_per_byte` from the
    lm_eval_perplexity record) is finite and is what its definitions give from the log-likelihood, words, bytes,
    tokens and windows recorded with it; PASS states it beside qcheck's token perplexity of the same subject and
    names why the two differ. A measurement stopped by NaN/inf logits FAILs; a SKIPPED record skips."""
    from qcheck.records import MeasurementError, RecordStatus

    name = "lm_eval_perplexity"
    if record is None:
        raise DataError(f"no lm_eval_perplexity record for {variant}")
    if record.status == RecordStatus.SKIPPED:
        return CheckResult(name, Status.SKIPPED, record.reason, variant=variant)
    if record.status == RecordStatus.ERROR and record.data.get("error_type") != "NonFiniteError":
        raise MeasurementError(record)
    data, where = record.data, record.settings
    problems = ([f"not finite: {record.reason}"] if record.status == RecordStatus.ERROR
                else _lm_eval_problems(data))
    ours = perplexity.to_dict(with_windows=False) if perplexity is not None else None
    evidence = {"lm_eval": {k: data.get(k) for k in (*LM_EVAL_FIGURES, "n_documents", "n_words", "n_bytes",
                                                     "n_tokens", "n_windows", "settings", "definition")},
                "documents": where, "qcheck_perplexity": ours,
                "differs_from_qcheck_perplexity": list(data.get("differs_from_qcheck_perplexity") or [])}
    if problems:
        status = Status.FAIL
        message = f"lm-eval's perplexity record of {variant} is impossible: " + "; ".join(problems)
    else:
        status = Status.PASS
        pages = f" (pages {where['pages']})" if where.get("pages") else ""
        message = (f"lm-eval (loglikelihood_rolling, max_length {data['settings']['max_length']}) on "
                   f"{data['n_documents']} document(s) of {where.get('documents', 'the run')}{pages}, "
                   f"{data['n_tokens']} tokens, {data['n_words']} words, {data['n_bytes']} bytes: word_perplexity "
                   f"{data['word_perplexity']:.4f}, byte_perplexity {data['byte_perplexity']:.4f}, bits_per_byte "
                   f"{data['bits_per_byte']:.4f}; {_qcheck_side(perplexity, variant)}. Different quantities: "
                   + "; ".join(evidence["differs_from_qcheck_perplexity"]))
        step = window_sum_step(data)
        if step is not None:
            evidence["window_sum_step_nats"] = step
            dtype = (data.get("settings") or {}).get("softmax_dtype")
            message += (f". As lm-eval does, each window's log-likelihood sum was kept in {dtype}: steps of "
                        f"{step:g} nats here, so two models within one step print the same figures (a variant "
                        "equal to the reference's here is not thereby unquantized; qcheck's perplexity above "
                        "resolves them)")
    return raise_if_failed(CheckResult(
        name, status, message, variant=variant, n=data.get("n_tokens"),
        compared=f"lm-eval's word_perplexity, byte_perplexity and bits_per_byte of {variant} against the "
                 "log-likelihood, words, bytes, tokens and windows they are computed from",
        test="identities: exp(-LL / words), exp(-LL / bytes), bits_per_byte = log2(byte_perplexity), per-document "
             "sums, ceil(tokens / max_length) windows per document, LL <= 0, finite",
        threshold={"rel_tol": LM_EVAL_IDENTITY_TOL}, evidence=evidence))


# ---------------------------------------------------------------- \boxed{} format

def _outputs(side: GenerationRun | Sequence[Generation | str]) -> list[Generation]:
    items = side.outputs if isinstance(side, GenerationRun) else list(side)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Generation):
            out.append(item)
        elif isinstance(item, str) or item is None:
            out.append(Generation(str(i), item or "", -1, -1, "unknown"))
        else:
            raise DataError(f"output {i} is a {type(item).__name__}, not a Generation or str")
    return out


def _format_stats(outputs: list[Generation]) -> dict[str, Any]:
    answers = [extract_boxed(g.text) for g in outputs]
    counts = Counter(a.status.value for a in answers)
    boxed = sum(a.ok for a in answers)
    ci = wilson_interval(boxed, len(answers))
    known = [g.n_new_tokens for g in outputs if g.n_new_tokens >= 0]
    return {"answers": answers, "boxed": boxed, "n": len(answers), "rate": boxed / len(answers),
            "interval": {"low": ci.low, "high": ci.high, "method": ci.method},
            "status_counts": {s.value: counts.get(s.value, 0) for s in BoxStatus},
            "zero_new_tokens": sum(1 for t in known if t == 0),
            "mean_new_tokens": float(np.mean(known)) if known else None,
            "stops": dict(Counter(g.stop for g in outputs))}


def _symptoms(stats: dict[str, Any]) -> list[str]:
    c = stats["status_counts"]
    out = []
    if c["empty"]:
        out.append(f"{c['empty']} empty responses" + (
            f" ({stats['zero_new_tokens']} with 0 new tokens generated: the generation budget was cut to 0)"
            if stats["zero_new_tokens"] else ""))
    if c["missing"]:
        out.append(f"{c['missing']} responses without \\boxed{{}} (extracted: None)")
    if c["malformed"]:
        out.append(f"{c['malformed']} malformed boxes")
    return out


def assert_boxed_format(reference: GenerationRun | Sequence[Generation | str],
                        candidate: GenerationRun | Sequence[Generation | str], *, variant: str,
                        max_empty_fraction: float = MAX_EMPTY_FRACTION, alpha: float = 0.05, examples: int = 3,
                        reference_name: str = "fp32") -> CheckResult:
    """A variant's `\\boxed{}` compliance is not significantly below the reference's on the same prompts
    (paired, McNemar exact, one-sided), and it returns no more than `max_empty_fraction` empty outputs."""
    ref, cand = _outputs(reference), _outputs(candidate)
    if len(ref) != len(cand) or not ref:
        raise DataError(f"paired format check needs the same non-empty prompt list: {len(ref)} reference outputs, "
                        f"{len(cand)} {variant} outputs")
    mismatched = [i for i, (a, b) in enumerate(zip(ref, cand)) if a.id != b.id]
    if mismatched:
        raise DataError(f"outputs are not paired: prompt ids differ at positions {mismatched[:5]}")
    settings = {}
    if isinstance(reference, GenerationRun) and isinstance(candidate, GenerationRun):
        settings = {reference_name: reference.settings.to_dict(), variant: candidate.settings.to_dict()}
    rs, cs = _format_stats(ref), _format_stats(cand)
    test = mcnemar_exact([a.ok for a in rs["answers"]], [a.ok for a in cs["answers"]], alternative="greater")
    n = len(ref)
    failures = [{"id": g.id, "status": a.status.value, "reason": a.reason, "new_tokens": g.n_new_tokens,
                 "output": g.text[:240], "reference_status": r.status.value}
                for g, a, r in zip(cand, cs["answers"], rs["answers"]) if not a.ok][:examples]
    reference_ok = rs["boxed"] > 0
    evidence = {
        reference_name: {k: v for k, v in rs.items() if k != "answers"},
        variant: {k: v for k, v in cs.items() if k != "answers"},
        "mcnemar": test.to_dict(), "example_failures": failures, "settings": settings,
        "reference_succeeds": reference_ok,
        "reference_note": (f"the reference boxes {rs['boxed']}/{n} answers with the same prompts and settings"),
    }
    empty_frac = cs["status_counts"]["empty"] / n
    ref_empty = rs["status_counts"]["empty"] / n
    problems = []
    if settings and settings[reference_name] != settings[variant]:
        problems.append(f"generation settings differ between {reference_name} and {variant}: outputs not comparable")
    if empty_frac > max_empty_fraction and empty_frac > ref_empty:
        problems.append(f"{cs['status_counts']['empty']}/{n} outputs are empty ({empty_frac:.0%} > "
                        f"{max_empty_fraction:.0%}; the reference: {rs['status_counts']['empty']}/{n})")
    if test.pvalue < alpha:
        problems.append(f"boxed rate {cs['boxed']}/{n} is significantly below the reference's {rs['boxed']}/{n} "
                        f"(McNemar exact one-sided p={test.pvalue:.3g}, only the reference boxed {test.b}, only "
                        f"{variant} {test.c})")
    symptoms = _symptoms(cs)
    rates = f"boxed {cs['boxed']}/{n} vs {reference_name} {rs['boxed']}/{n} on the same prompts"
    if problems:
        status = Status.FAIL
        message = "; ".join(problems) + (f". {SEED_002}: " + ", ".join(symptoms) if symptoms else "")
        message += f" ({evidence['reference_note']})"
    elif not reference_ok:
        status = Status.INCONCLUSIVE
        message = (f"the reference boxes no answer with these prompts and settings ({rates}): the prompt or the "
                   "generation budget is at fault, not the quantization; fix the prompt or raise the budget "
                   "(--new-tokens; --qcheck-new-tokens under pytest) before comparing")
    elif cs["boxed"] < rs["boxed"] and n < MIN_SAMPLES:
        status = Status.INCONCLUSIVE
        message = (f"{rates}: lower, but not significantly (McNemar p={test.pvalue:.3g}) with n={n} < {MIN_SAMPLES} "
                   "prompts; run more prompts (--prompts or --samples; --qcheck-prompts or --qcheck-samples under pytest)")
    elif n < MIN_SAMPLES:
        status = Status.WARN
        message = f"{rates}; not significantly lower (McNemar p={test.pvalue:.3g}), but n={n} < {MIN_SAMPLES}"
    else:
        status = Status.PASS
        message = f"{rates}; not significantly lower (McNemar p={test.pvalue:.3g}); {empty_frac:.0%} empty"
    return raise_if_failed(CheckResult(
        name="boxed_format", status=status, message=message, variant=variant, n=n,
        compared=f"\\boxed{{}} compliance of {variant} vs {reference_name} on the same prompts and settings",
        test="McNemar exact (one-sided: reference better) on paired boxed flags; empty-output fraction",
        threshold={"alpha": alpha, "max_empty_fraction": max_empty_fraction, "min_samples": MIN_SAMPLES},
        evidence=evidence))


# ---------------------------------------------------------------- multiple choice

def assert_not_collapsed(result: MCResult | int, n: int | None = None, chance: float | None = None, *,
                         variant: str | None = None, alpha: float = 0.05, task: str = "") -> CheckResult:
    """Accuracy is significantly above the task's chance rate (exact binomial test against 1/k); at or below
    chance is flagged as collapsed, above chance but unresolved is inconclusive; n < 30 warns."""
    if isinstance(result, MCResult):
        correct, n, chance, task = result.correct, result.n, result.chance, task or result.task
    else:
        correct = int(result)
        if n is None or chance is None:
            raise ConfigError("give an MCResult, or correct, n and chance", field="n")
    if not 0 < chance < 1:
        raise ConfigError(f"chance must be in (0, 1), got {chance}", field="chance")
    acc = correct / n if n else float("nan")
    p_above = binomial_test(correct, n, chance, "greater")
    p_below = binomial_test(correct, n, chance, "less")
    ci = wilson_interval(correct, n)
    evidence = {"correct": correct, "n": n, "accuracy": acc, "chance": chance, "task": task,
                "interval": ci.to_dict(), "p_above_chance": p_above, "p_below_chance": p_below}
    small = n < MIN_SAMPLES
    note = f"; n={n} < {MIN_SAMPLES}: underpowered, the interval is wide" if small else ""
    head = f"accuracy {correct}/{n} = {acc:.1%} (95% Wilson [{ci.low:.1%}, {ci.high:.1%}]) vs chance {chance:.1%}"
    if p_above < alpha:
        status = Status.WARN if small else Status.PASS
        message = f"{head}: above chance (binomial p={p_above:.3g}){note}"
    elif acc <= chance:
        status = Status.FAIL
        below = (f"significantly below chance (binomial p={p_below:.3g}): worse than guessing, check answer/label "
                 "alignment and scoring" if p_below < alpha else "indistinguishable from guessing")
        message = f"{head}: collapsed to chance, {below}{note}"
    else:
        status = Status.INCONCLUSIVE
        need = samples_needed(chance, acc)
        message = (f"{head}: not distinguishable from chance (binomial p={p_above:.3g}); about {need} questions "
                   f"would be needed{note}")
    return raise_if_failed(CheckResult(
        name="above_chance", status=status, message=message, variant=variant, n=n,
        compared=f"accuracy vs the task's chance rate {chance:.3f}", test="exact binomial test (one-sided)",
        threshold={"alpha": alpha, "min_samples": MIN_SAMPLES}, evidence=evidence))


def assert_difference_resolved(reference: MCResult | Sequence[bool], candidate: MCResult | Sequence[bool], *,
                               variant: str, reference_name: str = "fp32", alpha: float = 0.05,
                               level: float = 0.95) -> CheckResult:
    """Whether the accuracy difference between two variants on the same questions is resolved by the data
    (McNemar exact, two-sided); if not, it is INCONCLUSIVE with the interval of the difference shown."""
    a = reference.flags if isinstance(reference, MCResult) else [bool(x) for x in reference]
    b = candidate.flags if isinstance(candidate, MCResult) else [bool(x) for x in candidate]
    if (isinstance(reference, MCResult) and isinstance(candidate, MCResult)
            and [r.id for r in reference.records] != [r.id for r in candidate.records]):
        raise DataError("accuracy comparison needs the same questions in the same order")
    if len(a) != len(b) or not a:
        raise DataError(f"paired comparison needs equal non-empty lists, got {len(a)} and {len(b)}")
    n = len(a)
    test = mcnemar_exact(a, b)
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    ci = bootstrap_interval(diffs, level=level)
    pa, pb = sum(a) / n, sum(b) / n
    evidence = {"reference_accuracy": pa, "candidate_accuracy": pb, "difference": pb - pa,
                "interval": ci.to_dict(), "mcnemar": test.to_dict(), "n": n}
    head = (f"{variant} {sum(b)}/{n} vs {reference_name} {sum(a)}/{n}: difference {100 * (pb - pa):+.1f} points "
            f"({level:.0%} paired bootstrap [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}])")
    note = f"; n={n} < {MIN_SAMPLES}" if n < MIN_SAMPLES else ""
    if test.pvalue < alpha:
        status = Status.WARN if n < MIN_SAMPLES else Status.PASS
        message = f"{head}: resolved (McNemar exact p={test.pvalue:.3g}){note}"
    else:
        status = Status.INCONCLUSIVE
        need = samples_needed(pa, pb) if pa != pb else None
        evidence["samples_needed"] = need
        message = (f"{head}: smaller than n={n} questions can resolve (McNemar exact p={test.pvalue:.3g})"
                   + (f"; about {need} questions would be needed to resolve it" if need else
                      "; no difference observed") + note)
    return raise_if_failed(CheckResult(
        name="difference_resolved", status=status, message=message, variant=variant, n=n,
        compared=f"{variant} vs {reference_name} correctness on the same questions",
        test="McNemar exact (two-sided) on paired flags; paired bootstrap interval of the difference",
        threshold={"alpha": alpha, "min_samples": MIN_SAMPLES}, evidence=evidence))


def assert_summary_recomputable(claimed: float, records: Sequence[Mapping[str, Any]], key: str, *,
                                id_key: str = "id", tolerance: float = 1e-9,
                                variant: str | None = None) -> CheckResult:
    """A summary equals the mean recomputed from its per-sample records; NaN/None rows are named, never
    averaged away (seed 002: NaN averages, F1 50.0 in the summary vs 0.0 recomputed)."""
    evidence: dict[str, Any] = {"claimed": claimed, "key": key, "n_records": len(records)}
    try:
        ok, summary = check_summary(claimed, records, key, id_key=id_key, tolerance=tolerance)
    except DataError as exc:
        status, message = Status.FAIL, str(exc)
    else:
        evidence["recomputed"] = summary.value
        status = Status.PASS if ok else Status.FAIL
        message = (f"summary {key} = {claimed} equals the mean of its {summary.n} records" if ok else
                   f"summary {key} = {claimed} but its {summary.n} records give {summary.value:.6g}")
    return raise_if_failed(CheckResult(
        name="summary_recomputable", status=status, message=message, variant=variant, n=len(records),
        compared=f"claimed {key} vs the mean recomputed from per-sample records", test="exact recomputation",
        threshold={"tolerance": tolerance, "missing_values": "refused"}, evidence=evidence))
