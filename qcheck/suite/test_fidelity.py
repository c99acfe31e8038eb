"""Distribution fidelity against the reference: next-token KL(ref || variant) > 0 yet within stated bounds for
16-bit casts (exactly 0 means the variant is the reference, Z1), KL grows as bits go down within a family and a
mixed plan's KL lies between its uniform bounds (Z2); answer flips where per-question records exist.

Records per variant the metrics `kl_mean` and `top1_agreement` (value + bootstrap interval), `fidelity` (KL
median/p99/max, |Δp| of the reference's top token, identity evidence) and `answer_flips` per task.

On CPU the text is cut to CPU_TOKENS tokens and, unless --qcheck-variants names variants, the slow-on-CPU
variants (CPU_SLOW) are left out; on a GPU every variant is measured on --qcheck-tokens tokens.
"""
from __future__ import annotations

from typing import Any

import pytest

from qcheck.invariants.fidelity import assert_flips_consistent, assert_kl_between, assert_kl_ordering, assert_kl_sane
from qcheck.measure.fidelity import answer_flips, fidelity
from qcheck.results import Status
from qcheck.variants import FAMILIES, MIXED_BOUNDS, REFERENCE

CPU_TOKENS = 2048
CPU_SLOW = ("fp16", "bnb-int8", "bnb-nf4")
"""fp16 matmuls and bitsandbytes kernels are many times slower than fp32 on CPU."""


class FidelityRun:
    """The fidelity of every measured variant of the run, computed in one pass over the windows."""

    def __init__(self, results: dict[str, Any], left_out: dict[str, str], failed: dict[str, BaseException]) -> None:
        self.results, self.left_out, self.failed = results, left_out, failed

    def get(self, name: str) -> Any:
        """The variant's FidelityResult; skips (with the reason) when it was left out, re-raises a build error."""
        if name in self.failed:
            raise self.failed[name]
        if name not in self.results:
            pytest.skip(self.left_out.get(name, f"variant {name} not part of this run"))
        return self.results[name]

    def missing(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n not in self.results]


@pytest.fixture(scope="module")
def fidelity_run(qcheck_reference, qcheck_variants, qcheck_eval_text, qcheck_options, qcheck_device,
                 qcheck_report) -> FidelityRun:
    cpu = qcheck_device.type == "cpu"
    chosen_by_user = qcheck_options.variants is not None
    left_out: dict[str, str] = {}
    failed: dict[str, BaseException] = {}
    models = {}
    for name in qcheck_variants.names:
        if cpu and not chosen_by_user and name in CPU_SLOW:
            left_out[name] = (f"fidelity of {name} is not measured on CPU by default ({name} is slow there); "
                              f"name it in --qcheck-variants or run on a GPU")
            continue
        try:
            models[name] = qcheck_variants.model(name)
        except pytest.skip.Exception as exc:  # a variant this machine cannot build (e.g. a GPU-only backend)
            left_out[name] = str(exc.msg)
        except Exception as exc:  # noqa: BLE001 - reported by each of the variant's tests, not a crash of the module
            failed[name] = exc
    tokens = min(qcheck_options.tokens, CPU_TOKENS) if cpu else qcheck_options.tokens
    results = {}
    if models:
        results = fidelity(qcheck_reference.model, models, qcheck_reference.tokenizer, qcheck_eval_text.text,
                           max_tokens=tokens, context=qcheck_options.context, batch_size=1 if cpu else 8)
    for name, result in results.items():
        qcheck_report.add_metric(name, "kl_mean", result.metric("kl_mean"))
        qcheck_report.add_metric(name, "top1_agreement", result.metric("top1_agreement"))
        qcheck_report.add_metric(name, "fidelity", result.to_dict())
    qcheck_report.meta.setdefault("data", {})["fidelity_text"] = {
        "path": qcheck_eval_text.source, "sha256": qcheck_eval_text.sha256, "max_tokens": tokens,
        "context": qcheck_options.context, "variants_left_out": sorted(left_out)}
    return FidelityRun(results, left_out, failed)


def test_kl_sane(qcheck_variant, fidelity_run, qcheck_record):
    qcheck_record(assert_kl_sane(fidelity_run.get(qcheck_variant), variant=qcheck_variant))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kl_grows_as_bits_go_down(family, fidelity_run, qcheck_record):
    members = FAMILIES[family]
    missing = fidelity_run.missing(members)
    if missing:
        pytest.skip(f"family {family!r} ordering needs the fidelity of {missing}, not measured in this run")
    qcheck_record(assert_kl_ordering([fidelity_run.get(n) for n in members], family=family))


@pytest.mark.parametrize("mixed", sorted(MIXED_BOUNDS))
def test_mixed_kl_between_uniform_bounds(mixed, fidelity_run, qcheck_record):
    missing = fidelity_run.missing((mixed, *MIXED_BOUNDS[mixed]))
    if missing:
        pytest.skip(f"mixed KL check needs the fidelity of {missing}, not measured in this run")
    bounds = {n: fidelity_run.get(n) for n in MIXED_BOUNDS[mixed]}
    qcheck_record(assert_kl_between(fidelity_run.get(mixed), bounds, variant=mixed))


def per_question_flags(metric: Any) -> dict[str, bool] | None:
    """{question id: correct} from a recorded metric with per-question records, else None."""
    records = metric.get("records") if isinstance(metric, dict) else None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) and "correct" in r
                                                               for r in records):
        return None
    return {str(r.get("id", i)): r["correct"] for i, r in enumerate(records)}


def test_answer_flips(qcheck_variant, qcheck_report, qcheck_record):
    reference = qcheck_report.variant(REFERENCE).metrics
    variant = qcheck_report.variant(qcheck_variant).metrics
    checks, flips = [], {}
    for task in sorted(set(reference) & set(variant)):
        ref_flags, var_flags = per_question_flags(reference[task]), per_question_flags(variant[task])
        if ref_flags is None or var_flags is None:
            continue
        shared = [q for q in ref_flags if q in var_flags]
        if not shared:
            continue
        result = answer_flips([ref_flags[q] for q in shared], [var_flags[q] for q in shared])
        flips[task] = result.to_dict()
        checks.append(assert_flips_consistent(result, variant=qcheck_variant, task=task))
    if not checks:
        pytest.skip(f"no per-question records shared by {REFERENCE} and {qcheck_variant} in this run "
                    "(the accuracy modules record them)")
    qcheck_report.add_metric(qcheck_variant, "answer_flips", flips)
    for check in sorted(checks, key=lambda c: c.status == Status.INCONCLUSIVE):
        qcheck_record(check)
