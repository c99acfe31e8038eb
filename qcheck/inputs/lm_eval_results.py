"""A user's lm-evaluation-harness results files, given to `qcheck run --lm-eval-results [VARIANT=]FILE` as
evidence: read and validated before anything runs, each tied to one of the run's variants."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcheck.errors import QCheckError
from qcheck.variants import REFERENCE


@dataclass(frozen=True)
class LmEvalFile:
    """One results file: the variant it reports on, its path and SHA-256, and its per-task metrics with n."""

    variant: str
    path: str
    sha256: str
    model_args: str
    tasks: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "path": self.path, "sha256": self.sha256, "model_args": self.model_args,
                "tasks": self.tasks}


def parse_spec(spec: str) -> tuple[str, Path]:
    """'VARIANT=FILE' -> (VARIANT, FILE); a bare FILE reports on the reference (fp32)."""
    name, sep, file = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).is_file():
        return name.strip(), Path(file)
    return REFERENCE, Path(spec)


def read_lm_eval_file(spec: str, variants: list[str]) -> LmEvalFile:
    """Read and check one --lm-eval-results spec: the file exists, is lm-eval's results JSON, and names a variant
    of this run; QCheckError naming the problem otherwise."""
    from qcheck.inputs.data import read_json, sha256_of
    from qcheck.lint.readers import lm_eval

    variant, path = parse_spec(spec)
    if variant not in variants:
        raise QCheckError(f"--lm-eval-results {spec}: {variant!r} is not a variant of this run "
                          f"({', '.join(variants)}); write VARIANT=FILE with one of them")
    data = read_json(path, "the lm-eval results file", context=f"--lm-eval-results {spec}: ")
    if not lm_eval.detect(data):
        raise QCheckError(f"--lm-eval-results {spec}: {path} is not an lm-evaluation-harness results file (it has "
                          "no 'results' of task -> metrics beside 'configs' / 'n-samples'; give the results_*.json "
                          "that lm_eval --output_path writes)")
    n_samples = data.get("n-samples") or {}
    tasks: dict[str, dict[str, Any]] = {}
    for task, values in data["results"].items():
        counts = n_samples.get(task) or {}
        n = counts.get("effective", counts.get("original")) if isinstance(counts, dict) else None
        metrics = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if filt not in ("", "none") or "_stderr" in metric or isinstance(value, (dict, list, str)):
                continue
            stderr = values.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
            metrics[metric] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
        tasks[str(task)] = {"n": n, "metrics": metrics}
    args = (data.get("config") or {}).get("model_args") or ""
    return LmEvalFile(variant, str(path), sha256_of(path), str(args), tasks)
