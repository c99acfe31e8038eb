"""What the tools users already trust say, checked against what qcheck measured: a user's lm-evaluation-harness
results (`--lm-eval-results`) agree with qcheck's own scoring of the same task and variant, and the files read as
one comparison hold no impossible or suspicious numbers (qcheck lint's rules)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qcheck.results import CheckResult, Status, raise_if_failed

AGREEMENT_LEVEL = 0.999
"""Confidence of the difference interval between the reported and the measured accuracy: a reported figure is
called inconsistent only when a 99.9% Newcombe interval of (reported - measured) excludes 0. The two samples differ
(lm-eval scores the whole test split, qcheck a slice of it) and overlap, which makes the independence assumption
conservative; at n=50 the interval is about +/-0.3 wide, so only a gross disagreement (another prompt, another
model, a typo in a table) fails."""
TASKS = {"arc_easy": "acc"}
"""lm-eval tasks qcheck also scores, and the metric that matches qcheck's (summed log-likelihood per choice: lm-eval's
`acc`; qcheck's per-question choices equal lm-eval's on ARC-Easy, docs/quality.md)."""


def assert_lm_eval_agrees(reported: dict[str, Any], measured: Any, *, variant: str, task: str = "arc_easy",
                          level: float = AGREEMENT_LEVEL) -> CheckResult:
    """A reported lm-eval accuracy (the task's entry of a results file: n and metrics) agrees, within sampling noise,
    with qcheck's MCResult for the same variant and task; INCONCLUSIVE when the file reports no n."""
    from qcheck.stats import newcombe_difference

    metric = TASKS[task]
    value = (reported.get("metrics") or {}).get(metric, {}).get("value")
    n = reported.get("n")
    name = "lm_eval_agrees"
    compared = f"lm-eval's {task} {metric} of {variant} vs qcheck's scoring of the same task and variant"
    if value is None:
        return CheckResult(name, Status.SKIPPED, f"the lm-eval file reports no {metric} for {task}", variant=variant)
    if not n:
        return CheckResult(name, Status.INCONCLUSIVE, f"lm-eval reports {task} {metric} {value:.4f} without "
                           "n-samples: no interval can be formed", variant=variant, compared=compared,
                           evidence={"reported": reported})
    diff, low, high = (float(x) for x in newcombe_difference(value * n, n, measured.correct, measured.n, level))
    evidence = {"reported": {"value": value, "n": n, "stderr": reported["metrics"][metric].get("stderr")},
                "measured": {"value": measured.accuracy, "n": measured.n, "correct": measured.correct},
                "difference": {"estimate": diff, "low": low, "high": high, "level": level}}
    text = (f"lm-eval {task} {metric} {value:.4f} (n={n}) vs qcheck {measured.accuracy:.4f} "
            f"({measured.correct}/{measured.n}): difference {diff:+.3f} [{low:+.3f}, {high:+.3f}]")
    if low > 0 or high < 0:
        status = Status.FAIL
        message = (f"{text}: the reported accuracy disagrees with what qcheck measured beyond sampling noise "
                   f"({level:.1%} interval): another model, prompt, shot count or scoring produced that figure")
    else:
        status, message = Status.PASS, f"{text}: consistent within sampling noise"
    return raise_if_failed(CheckResult(
        name, status, message, variant=variant, compared=compared, n=min(n, measured.n),
        test=f"Newcombe hybrid score interval of the difference of two proportions ({level:.1%})",
        threshold={"fail_when": "interval excludes 0", "level": level}, evidence=evidence))


def judge_lm_eval_lint(findings: Sequence[dict[str, Any]], files: Sequence[str]) -> CheckResult:
    """The lm-eval files given to the run, linted as one comparison: an error-level finding (an impossible number,
    a tie across precisions, NaN) FAILs, warnings WARN, naming rule ids and rows."""
    errors = [f for f in findings if f.get("severity") == "error"]
    warnings = [f for f in findings if f.get("severity") == "warning"]
    shown = errors or warnings
    summary = "; ".join(f"{f['rule']}: {f['message'][:200]}" for f in shown[:3])
    if errors:
        status, message = Status.FAIL, f"{len(errors)} error findings in the lm-eval results: {summary}"
    elif warnings:
        status, message = Status.WARN, f"{len(warnings)} warnings in the lm-eval results: {summary}"
    else:
        status, message = Status.PASS, f"{len(files)} lm-eval results files linted as one comparison: no finding"
    return raise_if_failed(CheckResult(
        "lm_eval_results_lint", status, message, n=len(files), compared="the lm-eval results files given to the run",
        test="qcheck lint's rules (docs/lint.md)", threshold="no error-level finding",
        evidence={"findings": list(findings)[:50], "files": list(files)}))
