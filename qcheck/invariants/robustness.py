"""`assert_robust_le_clean`: robust accuracy never exceeds clean accuracy (Z3).

Exact on the per-sample records of qcheck's own evaluation (robust = clean-correct AND stays correct).
For a user's own numbers a test decides whether robust > clean is noise or a bug: McNemar exact on paired
per-sample flags, a Newcombe interval on counts or rates (pairing unknown). Under-powered comparisons are
INCONCLUSIVE with the interval and the sample size that would resolve the gap. Failures name likely causes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from qcheck.errors import ConfigError
from qcheck.quant.offload import input_device
from qcheck.results import CheckResult, Status, raise_if_failed

NAME = "robust_le_clean"
CAUSES = {
    "different_samples": "different sample sets: robust accuracy measured on other (or fewer) samples than clean "
                         "accuracy, e.g. a random subset, or robust = correct/attacked instead of correct/n",
    "predicted_labels": "attack with model-predicted labels that pushes wrong samples right: an attack that uses the "
                        "model's own predictions as labels and counts every sample moves wrong answers away from "
                        "themselves, sometimes onto the right one; attack clean-correct samples only, with true labels",
    "randomized": "randomized model: precision (or noise) re-drawn on every forward pass, so the clean and robust "
                  "passes disagree by chance; fix the draw, or evaluate with expectation over draws",
    "train_mode": "eval mode off: model.train() left on during evaluation (dropout re-drawn per forward); call "
                  "model.eval()",
}
RULE = "AutoAttack's rule: only clean-correct samples attacked; robust = clean-correct AND correct after the attack"



def _causes(order: Sequence[str]) -> str:
    rest = [k for k in CAUSES if k not in order]
    return "likely causes: " + "; ".join(f"({i + 1}) {CAUSES[k]}" for i, k in enumerate(list(order) + rest))


def newcombe_difference(p_robust: float, n_robust: int, p_clean: float, n_clean: int,
                        level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) for p_robust - p_clean from two independent proportions."""
    from qcheck.stats import newcombe_difference as newcombe

    _, low, high = newcombe(p_robust * n_robust, n_robust, p_clean * n_clean, n_clean, level)
    return float(low), float(high)


def model_state(model: nn.Module, probe_ids: Any = None, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Is `model` in training mode, and do `repeats` forwards on the same probe differ (randomized)?
    Runs under a forked, seeded torch RNG: reproducible, and the caller's RNG state is left alone."""
    import torch

    from qcheck.measure.weights import probe_input_ids

    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if probe_ids is None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", 256)
        probe_ids = probe_input_ids(vocab, batch=1, length=16)
    device = input_device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        outs = [model(input_ids=probe_ids.to(device)).logits.float() for _ in range(repeats)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    return {"training_modules": training[:20], "train_mode": bool(training), "repeat_max_abs_diff": diff,
            "repeats": repeats, "randomized": diff > 1e-4}


def assert_robust_le_clean(
    clean: Any,
    robust: Any = None,
    *,
    n: int | None = None,
    n_robust: int | None = None,
    clean_ids: Sequence[Any] | None = None,
    robust_ids: Sequence[Any] | None = None,
    model: nn.Module | None = None,
    level: float = 0.95,
    variant: str | None = None,
) -> CheckResult:
    """robust accuracy <= clean accuracy.

    - `clean` a RobustnessEvaluation (qcheck's own): exact check of every per-sample record;
    - per-sample flags (`clean`, `robust` sequences of bool, optionally with ids): exact per sample, McNemar
      exact (robust better than clean) says whether an excess is beyond noise;
    - counts (ints) or rates (floats in [0, 1]) with `n` (and `n_robust` when it differs): Newcombe interval;
      a positive gap the interval cannot resolve is INCONCLUSIVE with the sample size needed.
    With `model`, training mode and randomness (a repeated forward) are probed and put first among the causes.
    """
    from qcheck.measure.robustness import RobustnessEvaluation

    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}", field="level")
    state = model_state(model) if model is not None else None
    if isinstance(clean, RobustnessEvaluation):
        return raise_if_failed(_check_evaluation(clean, level, variant or clean.variant))
    if robust is None:
        raise ConfigError("give robust accuracy (flags, a count or a rate) next to clean", field="robust")
    if _is_flags(clean) or _is_flags(robust):
        return raise_if_failed(_check_flags(list(clean), list(robust), clean_ids, robust_ids, state, level, variant))
    return raise_if_failed(_check_counts(clean, robust, n, n_robust, state, level, variant))


def _is_flags(x: Any) -> bool:
    return not isinstance(x, (str, bytes)) and hasattr(x, "__len__") and not hasattr(x, "records")


def _ranked(state: dict[str, Any] | None, default: Sequence[str]) -> list[str]:
    first: list[str] = []
    if state is not None:
        if state["train_mode"]:
            first.append("train_mode")
        if state["randomized"]:
            first.append("randomized")
    return first + [k for k in default if k not in first]


def _check_evaluation(ev: Any, level: float, variant: str | None) -> CheckResult:
    from qcheck.stats import mcnemar_exact

    recs = ev.records
    clean = [r.clean_correct for r in recs]
    robust = [r.robust for r in recs]
    broken = [r.id for r in recs if r.robust and not r.clean_correct]
    attacked_wrong = [r.id for r in recs if r.attacked and not r.clean_correct]
    unattacked_right = [r.id for r in recs if r.clean_correct and not r.attacked and not ev.randomization.refused]
    rnd = ev.randomization
    grads = ev.gradient_counts()
    bad_grad = {k: v for k, v in grads.items() if k != "ok"}
    evidence: dict[str, Any] = ev.to_dict(with_records=True)
    evidence["clean_accuracy_interval"] = ev.metric("clean_accuracy", level)["interval"]
    evidence["robust_accuracy_interval"] = ev.metric("robust_accuracy", level)["interval"]
    if ev.n:
        evidence["mcnemar"] = mcnemar_exact(clean, robust, alternative="greater").to_dict()
    problems: list[str] = []
    warnings: list[str] = []
    if broken:
        problems.append(f"{len(broken)} records are robust but not clean-correct ({broken[:8]}): the rule is broken")
    if attacked_wrong:
        problems.append(f"{len(attacked_wrong)} clean-wrong samples were attacked ({attacked_wrong[:8]})")
    if unattacked_right:
        problems.append(f"{len(unattacked_right)} clean-correct samples were never attacked ({unattacked_right[:8]})")
    if rnd.train_mode:
        problems.append(f"eval mode off: {len(rnd.training_modules)} modules in training mode "
                        f"({', '.join(rnd.training_modules[:4])}); dropout: {list(rnd.dropout_modules)[:4] or 'none'}"
                        f"; repeated clean pass differs by {rnd.repeat_max_abs_diff:.3g}. {CAUSES['train_mode']}")
    elif rnd.randomized:
        msg = (f"randomized model: two identical clean passes differ (max |score diff| {rnd.repeat_max_abs_diff:.3g}, "
               f"{rnd.repeat_prediction_flips} predictions flipped)")
        if rnd.refused:
            problems.append(msg + "; refused (evaluate with randomized='expectation' to score the expectation over "
                                  "draws). " + CAUSES["randomized"])
        else:
            warnings.append(msg + f"; evaluated with expectation over {rnd.draws} draws (EOT)")
    attacked = ev.attacked
    if attacked and bad_grad.get("missing", 0) + bad_grad.get("zero", 0) == attacked:
        problems.append(f"the attack had no gradient on any of the {attacked} attacked samples ({bad_grad}): inputs "
                        "detached or rounded without a straight-through estimator; robust accuracy would equal clean "
                        "by default, not by robustness")
    elif bad_grad:
        warnings.append(f"gradient problems on {sum(bad_grad.values())} of {attacked} attacked samples ({bad_grad}): "
                        "their robust flags are upper bounds")
    gap = ev.gap_metric(level)["interval"]
    summary = (f"clean {ev.clean_correct}/{ev.n} ({ev.clean_accuracy:.1%}), robust {ev.robust_correct}/{ev.n} "
               f"({ev.robust_accuracy:.1%}), gap {ev.gap:+.1%} [{gap['low']:.1%}, {gap['high']:.1%}]; attacks "
               f"{'+'.join(ev.config.attacks)} at epsilon {ev.config.epsilon:g} (embedding-norm units)")
    if problems:
        status, message = Status.FAIL, "; ".join(problems) + f" [{summary}]"
    elif warnings:
        status, message = Status.WARN, "; ".join(warnings) + f" [{summary}]"
    else:
        status, message = Status.PASS, f"robust <= clean on every sample by construction: {summary}"
    return CheckResult(
        name=NAME, status=status, message=message, variant=variant, n=ev.n,
        compared="per-sample records of qcheck's evaluation: clean-correct, attacked, robust flags on the same ids",
        test="exact per-sample rule check; repeated clean pass (randomization); gradient existence",
        threshold={"rule": RULE, "repeat_tolerance": 1e-4}, evidence=evidence)


def _check_flags(clean: list[Any], robust: list[Any], clean_ids: Sequence[Any] | None,
                 robust_ids: Sequence[Any] | None, state: dict[str, Any] | None, level: float,
                 variant: str | None) -> CheckResult:
    from qcheck.stats import mcnemar_exact, paired_bootstrap_difference

    evidence: dict[str, Any] = {"n_clean": len(clean), "n_robust": len(robust), "model_state": state}
    base: dict[str, Any] = {"name": NAME, "variant": variant, "threshold": {"rule": RULE, "alpha": round(1 - level, 6)}}
    if clean_ids is not None and len(clean_ids) != len(clean):
        raise ConfigError(f"{len(clean_ids)} clean ids for {len(clean)} clean flags", field="clean_ids")
    if robust_ids is not None and len(robust_ids) != len(robust):
        raise ConfigError(f"{len(robust_ids)} robust ids for {len(robust)} robust flags", field="robust_ids")
    if (clean_ids is None) != (robust_ids is None):
        raise ConfigError("give ids for both clean and robust flags, or for neither", field="robust_ids")
    if clean_ids is not None:
        cmap = dict(zip(clean_ids, clean))
        rmap = dict(zip(robust_ids, robust))
        only_clean = [i for i in clean_ids if i not in rmap]
        only_robust = [i for i in robust_ids if i not in cmap]
        if only_clean or only_robust:
            evidence.update(only_in_clean=list(only_clean)[:20], only_in_robust=list(only_robust)[:20],
                            shared=len(set(cmap) & set(rmap)),
                            clean_accuracy=sum(map(bool, clean)) / max(1, len(clean)),
                            robust_accuracy=sum(map(bool, robust)) / max(1, len(robust)))
            return CheckResult(
                status=Status.FAIL, n=len(clean), evidence=evidence, **base,
                message=(f"clean and robust were measured on different samples: {len(only_clean)} ids only in clean, "
                         f"{len(only_robust)} only in robust ({len(set(cmap) & set(rmap))} shared); "
                         + _causes(_ranked(state, ["different_samples"]))),
                compared="the sample ids behind clean and robust accuracy", test="set equality of ids")
        order = list(clean_ids)
        clean = [bool(cmap[i]) for i in order]
        robust = [bool(rmap[i]) for i in order]
        ids = order
    else:
        if len(clean) != len(robust):
            evidence.update(clean_accuracy=sum(map(bool, clean)) / max(1, len(clean)),
                            robust_accuracy=sum(map(bool, robust)) / max(1, len(robust)))
            return CheckResult(
                status=Status.FAIL, n=len(clean), evidence=evidence, **base,
                message=(f"clean has {len(clean)} samples but robust has {len(robust)}: not the same sample set; "
                         + _causes(_ranked(state, ["different_samples"]))),
                compared="sample counts behind clean and robust accuracy", test="equal sample sets")
        ids = list(range(len(clean)))
        clean = [bool(x) for x in clean]
        robust = [bool(x) for x in robust]
    n = len(clean)
    mc = mcnemar_exact(robust, clean, alternative="greater")
    excess = [i for i, c, r in zip(ids, clean, robust) if r and not c]
    diff = paired_bootstrap_difference([float(c) for c in clean], [float(r) for r in robust], level=level)
    evidence.update(mcnemar=mc.to_dict(), robust_but_clean_wrong=excess[:50], clean_correct=sum(clean),
                    robust_correct=sum(robust), difference_robust_minus_clean=diff.to_dict(),
                    paired_by="ids" if clean_ids is not None else "position")
    compared = "paired per-sample flags: clean-correct vs robust-correct on the same samples"
    test = "exact per-sample rule; McNemar exact (one-sided: robust better than clean)"
    summary = f"clean {sum(clean)}/{n}, robust {sum(robust)}/{n}"
    if not excess:
        return CheckResult(status=Status.PASS, n=n, evidence=evidence, compared=compared, test=test, **base,
                           message=f"no sample is robust-correct but clean-wrong ({summary}): robust <= clean holds "
                                   "per sample")
    alpha = 1 - level
    if mc.pvalue < alpha:
        verdict = (f"robust beats clean beyond noise (McNemar exact p={mc.pvalue:.3g} < {alpha:g}: "
                   f"{mc.b} samples only robust-correct vs {mc.c} only clean-correct): a bug, not noise")
        order = _ranked(state, ["predicted_labels", "different_samples"])
    else:
        verdict = (f"the excess is within noise (McNemar exact p={mc.pvalue:.3g}), yet no correct pipeline produces "
                   "even one such sample")
        order = _ranked(state, ["predicted_labels", "randomized", "train_mode"])
    return CheckResult(
        status=Status.FAIL, n=n, evidence=evidence, compared=compared, test=test, **base,
        message=(f"{len(excess)} samples are robust-correct but clean-wrong ({excess[:8]}), which AutoAttack's rule "
                 f"forbids ({summary}); {verdict}; " + _causes(order)))


def _as_rate(value: Any, n: int, what: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a count or a rate, got a bool", field=what)
    if isinstance(value, int):
        if not 0 <= value <= n:
            raise ConfigError(f"{what} count {value} outside 0..{n}", field=what)
        return value / n
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ConfigError(f"{what} rate must be in [0, 1], got {value!r} (give percentages as fractions)", field=what)
    return v


def _check_counts(clean: Any, robust: Any, n: int | None, n_robust: int | None, state: dict[str, Any] | None,
                  level: float, variant: str | None) -> CheckResult:
    from qcheck.stats import samples_needed

    if n is None or n < 1:
        raise ConfigError("counts or rates need n, the number of samples behind clean accuracy", field="n")
    nr = n if n_robust is None else n_robust
    if nr < 1:
        raise ConfigError(f"n_robust must be >= 1, got {nr}", field="n_robust")
    p_clean = _as_rate(clean, n, "clean")
    p_robust = _as_rate(robust, nr, "robust")
    low, high = newcombe_difference(p_robust, nr, p_clean, n, level)
    evidence: dict[str, Any] = {"clean_accuracy": p_clean, "robust_accuracy": p_robust, "n_clean": n,
                                "n_robust": nr, "difference_robust_minus_clean": p_robust - p_clean,
                                "interval": {"low": low, "high": high, "level": level,
                                             "method": "Newcombe hybrid score (independent; pairing unknown)"},
                                "model_state": state}
    for rate, count_n, name in ((p_clean, n, "clean"), (p_robust, nr, "robust")):
        k = rate * count_n
        if abs(k - round(k)) > 1e-6:
            evidence.setdefault("notes", []).append(
                f"{name} rate {rate:.4%} is not k/{count_n} for any integer k: averaged over runs or seeds?")
    base: dict[str, Any] = {
        "name": NAME, "variant": variant, "n": n, "evidence": evidence,
        "compared": f"robust accuracy vs clean accuracy from counts/rates (n={n}, n_robust={nr})",
        "test": f"Newcombe {level:.0%} interval of robust - clean (pairing unknown: pass per-sample flags for McNemar)",
        "threshold": {"rule": RULE, "level": level}}
    gap = p_robust - p_clean
    interval = f"[{low:+.2%}, {high:+.2%}]"
    if nr != n:
        return CheckResult(status=Status.FAIL, **base,
                           message=(f"clean accuracy is over {n} samples but robust over {nr}: not the same samples "
                                    f"(clean {p_clean:.2%}, robust {p_robust:.2%}); "
                                    + _causes(_ranked(state, ["different_samples"]))))
    if gap <= 0:
        return CheckResult(status=Status.PASS, **base,
                           message=(f"robust {p_robust:.2%} <= clean {p_clean:.2%} on {n} samples "
                                    "(counts only: per-sample flags would make this exact)"))
    if low > 0:
        return CheckResult(status=Status.FAIL, **base,
                           message=(f"robust accuracy {p_robust:.2%} exceeds clean {p_clean:.2%} by {gap:+.2%} on {n} "
                                    f"samples, beyond noise (interval {interval} excludes 0): a bug, not noise; "
                                    + _causes(_ranked(state, ["different_samples", "predicted_labels"]))))
    needed = samples_needed(p_clean, p_robust, alpha=1 - level)
    evidence["samples_needed"] = needed
    return CheckResult(status=Status.INCONCLUSIVE, **base,
                       message=(f"robust {p_robust:.2%} exceeds clean {p_clean:.2%} by {gap:+.2%} on {n} samples, "
                                f"within noise: the {level:.0%} interval of robust - clean is {interval}; resolving a "
                                f"{abs(gap):.2%} gap needs about {needed:,} samples per arm (80% power). A pipeline "
                                f"that follows {RULE} on a deterministic model cannot show any excess, so check the "
                                "pipeline rather than collect more data; "
                                + _causes(_ranked(state, ["different_samples", "predicted_labels", "randomized"]))))


def paired_vs_reference(reference: Any, evaluation: Any) -> dict[str, Any]:
    """Robust flags of a variant vs the reference on the same question ids: McNemar exact (two-sided) as evidence."""
    from qcheck.stats import mcnemar_exact

    ref = {r.id: r.robust for r in reference.records}
    ids = [r.id for r in evaluation.records if r.id in ref]
    mine = {r.id: r.robust for r in evaluation.records}
    test = mcnemar_exact([ref[i] for i in ids], [mine[i] for i in ids])
    return {"fp32_robust": sum(ref[i] for i in ids), "variant_robust": sum(mine[i] for i in ids), "n": len(ids),
            "only_fp32_robust": test.b, "only_variant_robust": test.c, "pvalue": test.pvalue,
            "test": "McNemar exact, two-sided, robust flags on the same questions"}
