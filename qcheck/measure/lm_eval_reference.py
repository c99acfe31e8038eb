"""Run lm-evaluation-harness itself (the optional `lm-eval` extra) offline on local data: the reference that
qcheck's `lm_eval_compat` and `choice` measures are compared with.

lm-eval's own `wikitext` task is reused through `include:` (its detokenizer and word/byte counting run
unchanged); only the data source changes to a local JSONL of `{"page": ...}` rows. ARC-Easy uses lm-eval's ARC
format (`Question: ...\\nAnswer:`, acc and acc_norm) over a local JSONL of `{"prompt", "choices", "answer_idx"}`.
The model is an HF folder loaded by lm-eval's `HFLM` with its defaults (dtype "auto", its own tokenizer).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qcheck.errors import MissingDependencyError

WIKITEXT_TASK = "qcheck_wikitext_local"
ARC_TASK = "qcheck_arc_easy_local"
_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

ARC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{prompt}}}}\\nAnswer:"
doc_to_target: "{{{{answer_idx}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

WIKITEXT_YAML = """include: {include}
task: {task}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
training_split: null
validation_split: null
test_split: test
"""


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise MissingDependencyError("lm-eval", "running lm-evaluation-harness", extra="lm-eval") from None
    return lm_eval


def lm_eval_version() -> str:
    """The installed lm-eval's version."""
    from importlib.metadata import version

    _lm_eval()
    return version("lm_eval")


def write_wikitext_task(task_dir: str | Path, pages_jsonl: str | Path) -> str:
    """A task YAML that includes lm-eval's own `wikitext.yaml` with a local pages file; returns the task name."""
    lm_eval = _lm_eval()
    include = Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml"
    Path(task_dir).mkdir(parents=True, exist_ok=True)
    (Path(task_dir) / f"{WIKITEXT_TASK}.yaml").write_text(
        WIKITEXT_YAML.format(include=include, task=WIKITEXT_TASK, data=Path(pages_jsonl).resolve()), encoding="utf-8")
    return WIKITEXT_TASK


def write_arc_task(task_dir: str | Path, questions_jsonl: str | Path) -> str:
    """A task YAML in lm-eval's ARC format over local ARC-Easy rows; returns the task name."""
    Path(task_dir).mkdir(parents=True, exist_ok=True)
    (Path(task_dir) / f"{ARC_TASK}.yaml").write_text(
        ARC_YAML.format(task=ARC_TASK, data=Path(questions_jsonl).resolve()), encoding="utf-8")
    return ARC_TASK


def run_lm_eval(model_folder: str | Path, tasks: str | list[str], task_dir: str | Path, *, batch_size: int = 1,
                model_args: str = "", device: str = "cpu") -> dict[str, Any]:
    """`lm_eval.simple_evaluate` with `HFLM` on a local folder (its defaults plus `model_args`), offline, samples
    logged; one model load for all `tasks`, only the tasks in `task_dir` indexed (lm-eval's own are reached by
    `include:` paths; indexing all of them costs ~30 s).

    Returns, per task: {"metrics": {name: value}, "per_sample": [per doc, in doc order: its log-likelihoods],
    "version", "model_args", "batch_size"}; for a single task name, that task's entry alone."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    names = [tasks] if isinstance(tasks, str) else list(tasks)
    saved = {k: os.environ.get(k) for k in _OFFLINE}
    os.environ.update({k: "1" for k in _OFFLINE})
    args = f"pretrained={Path(model_folder).resolve()}" + (f",{model_args}" if model_args else "")
    try:
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        out = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=names, task_manager=manager,
                                      batch_size=batch_size, device=device, log_samples=True, random_seed=0,
                                      numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    runs = {}
    for task in names:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        per_sample = [[float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in s["filtered_resps"]]
                      for s in samples]
        metrics = {k.split(",")[0]: v for k, v in out["results"][task].items()
                   if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
        runs[task] = {"metrics": metrics, "per_sample": per_sample, "version": lm_eval_version(),
                      "model_args": args, "batch_size": batch_size}
    return runs[names[0]] if isinstance(tasks, str) else runs


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def compare_rolling(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Agreement of `lm_eval_perplexity`'s result with lm-eval's run on the same documents: relative differences
    of each metric and the largest one over per-document log-likelihoods."""
    ref_ll = [s[0] for s in reference["per_sample"]]
    our_ll = [d["loglikelihood"] for d in ours["documents"]]
    if len(ref_ll) != len(our_ll):
        raise ValueError(f"lm-eval scored {len(ref_ll)} documents, qcheck {len(our_ll)}")
    metrics = {m: {"qcheck": ours[m], "lm_eval": reference["metrics"][m], "rel_diff": _rel(ours[m],
                                                                                           reference["metrics"][m])}
               for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    doc_rel = [_rel(a, b) for a, b in zip(our_ll, ref_ll)]
    worst = max(range(len(doc_rel)), key=lambda i: doc_rel[i])
    return {"metrics": metrics, "n_documents": len(our_ll), "max_doc_rel_diff": doc_rel[worst],
            "worst_document": ours["documents"][worst]["id"],
            "loglikelihood": {"qcheck": sum(our_ll), "lm_eval": sum(ref_ll), "rel_diff": _rel(sum(our_ll),
                                                                                               sum(ref_ll))}}


def compare_choices(scores: list[tuple[float, ...]], choices: list[tuple[str, ...]], gold: list[int],
                    reference: dict[str, Any]) -> dict[str, Any]:
    """Agreement of per-choice summed log-likelihoods with lm-eval's on the same questions: predictions (acc and
    acc_norm, lm-eval's length-in-characters normalisation), accuracies and the largest relative difference."""
    ref = reference["per_sample"]
    if len(ref) != len(scores):
        raise ValueError(f"lm-eval scored {len(ref)} questions, qcheck {len(scores)}")

    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=lambda j: values[j])

    same = same_norm = acc_q = acc_r = norm_q = norm_r = 0
    worst = 0.0
    for ours, theirs, texts, g in zip(scores, ref, choices, gold):
        if len(ours) != len(theirs):
            raise ValueError(f"choice counts differ: {len(ours)} vs {len(theirs)}")
        worst = max(worst, *(_rel(a, b) for a, b in zip(ours, theirs)))
        p_q, p_r = argmax(list(ours)), argmax(list(theirs))
        n_q = argmax([s / len(t) for s, t in zip(ours, texts)])
        n_r = argmax([s / len(t) for s, t in zip(theirs, texts)])
        same += p_q == p_r
        same_norm += n_q == n_r
        acc_q += p_q == g
        acc_r += p_r == g
        norm_q += n_q == g
        norm_r += n_r == g
    n = len(scores)
    return {"n_questions": n, "same_prediction": same, "same_prediction_norm": same_norm,
            "acc": {"qcheck": acc_q / n, "lm_eval": reference["metrics"]["acc"], "recomputed_lm_eval": acc_r / n},
            "acc_norm": {"qcheck": norm_q / n, "lm_eval": reference["metrics"]["acc_norm"],
                         "recomputed_lm_eval": norm_r / n},
            "max_rel_diff": worst}
