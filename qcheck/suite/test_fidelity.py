"""Distribution fidelity against the reference: next-token KL(ref || variant) > 0 yet within stated bounds for
16-bit casts (exactly 0 means the variant is the reference, Z1), KL grows as bits go down within a family and a
mixed plan's KL lies between its uniform bounds (Z2); answer flips where per-question records exist. Judges the
run's fidelity, choice and generation records."""
from __future__ import annotations

import pytest

from qcheck.invariants.fidelity import assert_flips_consistent, assert_kl_between, assert_kl_ordering, assert_kl_sane
from qcheck.measure.fidelity import answer_flips, fidelity_from_record
from qcheck.results import Status
from qcheck.variants import FAMILIES, MIXED_BOUNDS, REFERENCE

needs = pytest.mark.qcheck_needs


def _present(group: tuple[str, ...]) -> object:
    return lambda names: list(group) if all(n in names for n in group) else []


@needs("fidelity")
def test_kl_sane(qcheck_variant, qcheck_records, qcheck_record):
    result = fidelity_from_record(qcheck_records.data(qcheck_variant, "fidelity"))
    qcheck_record(assert_kl_sane(result, variant=qcheck_variant, reference_dtype=qcheck_records.reference_dtype))


@pytest.mark.qcheck_check("kl_ordering", param="family")
@needs("fidelity", variants=lambda params, names: [n for n in FAMILIES[params["family"]] if n in names])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kl_grows_as_bits_go_down(family, qcheck_records, qcheck_record):
    members = FAMILIES[family]
    missing = [n for n in members if not qcheck_records.has(n, "fidelity")]
    if missing:
        reasons = {n: (qcheck_records.find(n, "fidelity").reason if qcheck_records.find(n, "fidelity") else
                       "not part of this run") for n in missing}
        pytest.skip(f"family {family!r} ordering needs the fidelity of {missing}, not measured in this run "
                    f"({'; '.join(f'{k}: {v}' for k, v in reasons.items())})")
    qcheck_record(assert_kl_ordering([fidelity_from_record(qcheck_records.data(n, "fidelity")) for n in members],
                                     family=family))


@pytest.mark.qcheck_check("kl_between_uniform", param="mixed")
@needs("fidelity", variants=lambda params, names: _present((params["mixed"], *MIXED_BOUNDS[params["mixed"]]))(names))
@pytest.mark.parametrize("mixed", sorted(MIXED_BOUNDS))
def test_mixed_kl_between_uniform_bounds(mixed, qcheck_records, qcheck_record):
    missing = [n for n in (mixed, *MIXED_BOUNDS[mixed]) if not qcheck_records.has(n, "fidelity")]
    if missing:
        pytest.skip(f"mixed KL check needs the fidelity of {missing}, not measured in this run")
    bounds = {n: fidelity_from_record(qcheck_records.data(n, "fidelity")) for n in MIXED_BOUNDS[mixed]}
    qcheck_record(assert_kl_between(fidelity_from_record(qcheck_records.data(mixed, "fidelity")), bounds,
                                    variant=mixed))


def per_question_flags(records: list) -> dict[str, bool] | None:
    """{question id: correct} from per-question records, else None."""
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) and "correct" in r
                                                               for r in records):
        return None
    return {str(r.get("id", i)): bool(r["correct"]) for i, r in enumerate(records)}


_TASKS = {"arc_accuracy": ("choice", lambda d: d["records"]), "boxed_rate": ("generation",
                                                                             lambda d: d["boxed"]["records"])}


@needs("choice", "generation", variants=lambda params, names: [REFERENCE, params["qcheck_variant"]])
def test_answer_flips(qcheck_variant, qcheck_records, qcheck_record):
    checks = []
    for task, (measurement, records_of) in _TASKS.items():
        if not (qcheck_records.has(REFERENCE, measurement) and qcheck_records.has(qcheck_variant, measurement)):
            continue
        ref_flags = per_question_flags(records_of(qcheck_records.data(REFERENCE, measurement)))
        var_flags = per_question_flags(records_of(qcheck_records.data(qcheck_variant, measurement)))
        if ref_flags is None or var_flags is None:
            continue
        shared = [q for q in ref_flags if q in var_flags]
        if not shared:
            continue
        flips = answer_flips([ref_flags[q] for q in shared], [var_flags[q] for q in shared])
        checks.append(assert_flips_consistent(flips, variant=qcheck_variant, task=task))
    if not checks:
        pytest.skip(f"no per-question records shared by {REFERENCE} and {qcheck_variant} in this run "
                    "(ARC-Easy scoring and GSM8K generation record them)")
    for check in sorted(checks, key=lambda c: c.status == Status.INCONCLUSIVE):
        qcheck_record(check)
