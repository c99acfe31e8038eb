"""Column roles: what each column means (perplexity, accuracy, bits, n, ...), inferred from its name."""
from __future__ import annotations

import re
from collections.abc import Mapping

IDENTITY_ROLES = ("config", "model", "task", "bits", "sparsity", "trial", "seed", "sample_id", "state")
META_ROLES = ("n", "correct", "num_classes", "params", "context_length", "tokens_per_sample", "batch", "interval",
              "output")
QUALITY_HIGHER = ("accuracy", "clean_acc", "robust_acc", "f1", "em")
QUALITY_ROLES = ("ppl",) + QUALITY_HIGHER + ("value", "metric")
TIME_ROLES = ("throughput", "latency", "sample_time", "total_time")
ENERGY_ROLES = ("energy", "power")
MEASUREMENT_ROLES = QUALITY_ROLES + TIME_ROLES + ENERGY_ROLES
KNOWN_ROLES = IDENTITY_ROLES + META_ROLES + MEASUREMENT_ROLES
"""Every role a column can have; `--column ROLE=NAME` accepts these."""

_EXACT: dict[str, frozenset[str]] = {
    "sample_id": frozenset({"sample_id", "sample", "example_id", "example", "question_id", "qid", "idx", "id",
                            "item_id", "doc_id"}),
    "trial": frozenset({"trial", "trial_id", "trial_number", "number", "trial_no"}),
    "seed": frozenset({"seed", "random_seed", "run_seed", "rng_seed"}),
    "value": frozenset({"value", "objective", "objective_value", "values_0"}),
    "state": frozenset({"state", "trial_state", "status"}),
    "n": frozenset({"n", "samples", "num_samples", "n_samples", "sample_size", "n_eval", "num_examples",
                    "n_examples", "support", "n_test", "num_eval", "eval_samples", "test_samples"}),
    "correct": frozenset({"correct", "n_correct", "num_correct", "hits", "successes", "n_right"}),
    "num_classes": frozenset({"num_classes", "n_classes", "classes", "k", "choices", "num_choices", "n_choices",
                              "n_way", "num_labels", "n_labels"}),
    "params": frozenset({"params", "n_params", "num_params", "parameters", "param_count", "n_parameters"}),
    "context_length": frozenset({"context_length", "context", "ctx", "n_ctx", "seq_len", "sequence_length",
                                 "max_length", "max_seq_len", "context_len", "seq_length", "block_size", "ctx_len"}),
    "tokens_per_sample": frozenset({"tokens_per_sample", "prompt_tokens", "tokens", "avg_tokens"}),
    "batch": frozenset({"batch", "batch_size", "bs"}),
    "output": frozenset({"response", "output", "completion", "generation", "generated", "generated_text",
                         "prediction", "reply", "model_output", "raw_output"}),
    "task": frozenset({"task", "dataset", "benchmark", "data", "eval_set", "task_name", "dataset_name"}),
    "model": frozenset({"model", "model_name", "checkpoint", "base_model", "model_id", "arch"}),
    "config": frozenset({"config", "configuration", "precision", "format", "variant", "method", "quantization",
                         "quant", "scheme", "name", "setting", "sampler", "condition", "dtype", "mode",
                         "quant_method", "type", "approach", "label", "run", "experiment"}),
    "total_time": frozenset({"total_time", "eval_time", "time_s", "time", "runtime", "elapsed", "wall_time",
                             "duration", "processing_time", "processing_time_s", "total_time_s", "elapsed_s"}),
}
_INTERVAL_SUFFIX = re.compile(r"_(low|high|lo|hi|lower|upper|ci_low|ci_high|ci|err|std|stderr|sem)$")
_SAMPLE_TIME = re.compile(r"(^|_)(s|sec|secs|seconds|time|ms)_per_(sample|example|item|question)($|_)|"
                          r"^per_sample_(s|sec|time|ms)$|^time_per_(sample|example)")
_THROUGHPUT = re.compile(r"throughput|tokens_per_s|tok_s|tok_per_s|samples_per_s|samp_s|it_s$|^tps$|^qps$|per_sec$")


def normalize(name: str) -> str:
    """Lower-case a column name and turn every run of other characters into '_'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def infer_role(name: str, kind: str = "numeric") -> str:
    """The role a column's name suggests; unknown numeric columns are 'metric', other unknown columns 'text'.

    `kind` is the column's content: 'numeric', 'text' or 'empty'.
    """
    norm = normalize(name)
    tokens = set(norm.split("_"))
    for role in ("sample_id", "trial", "seed", "value", "state", "n", "correct", "num_classes", "params",
                 "context_length", "tokens_per_sample", "batch", "output", "task", "model", "config", "total_time"):
        if norm in _EXACT[role]:
            return role
    if _INTERVAL_SUFFIX.search(norm) and norm not in ("ppl", "perplexity"):
        return "interval"
    if tokens & {"bits", "bit", "wbits", "nbits", "bitwidth"} or norm in ("bit_width", "w_bits"):
        return "bits"
    if tokens & {"sparsity", "pruning", "prune", "pruned"}:
        return "sparsity"
    if tokens & {"ppl", "perplexity"}:
        return "ppl"
    accuracy_like = bool(tokens & {"acc", "accuracy", "top1"})
    if "clean" in tokens and (accuracy_like or norm == "clean"):
        return "clean_acc"
    if tokens & {"robust", "adv", "adversarial"} and (accuracy_like or norm in ("robust", "adv")):
        return "robust_acc"
    if accuracy_like:
        return "accuracy"
    if "f1" in tokens:
        return "f1"
    if "em" in tokens or "exact_match" in norm:
        return "em"
    if _SAMPLE_TIME.search(norm):
        return "sample_time"
    if _THROUGHPUT.search(norm):
        return "throughput"
    if "latency" in tokens or norm in ("time_ms", "ms"):
        return "latency"
    if tokens & {"energy", "joules"}:
        return "energy"
    if tokens & {"power", "watts"}:
        return "power"
    return "metric" if kind == "numeric" else "text"


def assign_roles(columns: Mapping[str, str], explicit: Mapping[str, str]) -> dict[str, str]:
    """Map each column name (with its content kind) to a role; `explicit` ({role: column}) wins over inference."""
    roles = {name: infer_role(name, kind) for name, kind in columns.items()}
    for role, column in explicit.items():
        if column in roles:
            roles[column] = role
    for name, role in roles.items():
        if role in MEASUREMENT_ROLES and columns[name] == "text" and explicit.get(role) != name:
            roles[name] = "text"
    return roles
