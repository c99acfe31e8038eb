"""Column roles: what each column means (perplexity, accuracy, bits, n, ...), from its name and then its cells."""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from qcheck.lint.precision import OTHER, classify
from qcheck.lint.tables import Column, Table
from qcheck.lint.vocab import (
    BENCHMARK_PREFIXES,
    BENCHMARKS,
    CONDITION_NAMES,
    GPU_NAME,
    MEASURE_WORDS,
    MEMORY_WORDS,
    PPL_DATASETS,
    QPARAM_NAMES,
)

IDENTITY_ROLES = ("config", "model", "task", "bits", "sparsity", "trial", "seed", "sample_id", "state")
META_ROLES = ("n", "correct", "num_classes", "params", "context_length", "tokens_per_sample", "batch", "interval",
              "output", "condition", "qparam")
QUALITY_HIGHER = ("accuracy", "clean_acc", "robust_acc", "f1", "em", "score")
QUALITY_ROLES = ("ppl",) + QUALITY_HIGHER + ("value", "metric")
TIME_ROLES = ("throughput", "latency", "sample_time", "total_time", "timing")
DIRECTED_TIME_ROLES = ("throughput", "latency", "sample_time", "total_time")
ENERGY_ROLES = ("energy", "power")
AUX_ROLES = ("memory", "measure")
MEASUREMENT_ROLES = QUALITY_ROLES + TIME_ROLES + ENERGY_ROLES + AUX_ROLES
CONDITION_ROLES = ("context_length", "batch", "condition")
"""Experimental conditions: rows that differ in one are never compared (separate groups)."""
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
                    "n_examples", "support", "n_test", "num_eval", "eval_samples", "test_samples", "sample_len",
                    "examples", "num_docs", "n_docs", "num_questions", "n_questions"}),
    "correct": frozenset({"correct", "n_correct", "num_correct", "hits", "successes", "n_right"}),
    "num_classes": frozenset({"num_classes", "n_classes", "classes", "k", "choices", "num_choices", "n_choices",
                              "n_way", "num_labels", "n_labels"}),
    "params": frozenset({"params", "n_params", "num_params", "parameters", "param_count", "n_parameters",
                         "number_of_parameters", "num_parameters", "params_b", "model_params", "parameter_count"}),
    "context_length": frozenset({"context_length", "context", "ctx", "n_ctx", "seq_len", "sequence_length",
                                 "max_length", "max_seq_len", "context_len", "seq_length", "block_size", "ctx_len",
                                 "seqlen"}),
    "tokens_per_sample": frozenset({"tokens_per_sample", "prompt_tokens", "tokens", "avg_tokens"}),
    "batch": frozenset({"batch", "batch_size", "bs", "bsz"}),
    "output": frozenset({"response", "output", "completion", "generation", "generated", "generated_text",
                         "prediction", "reply", "model_output", "raw_output"}),
    "task": frozenset({"task", "dataset", "benchmark", "data", "eval_set", "task_name", "dataset_name",
                       "benchmarks"}),
    "model": frozenset({"model", "model_name", "checkpoint", "base_model", "model_id", "arch", "models", "llm",
                        "network", "architecture"}),
    "config": frozenset({"config", "configuration", "precision", "format", "variant", "method", "quantization",
                         "quant", "scheme", "name", "setting", "sampler", "condition", "dtype", "mode",
                         "quant_method", "type", "approach", "label", "run", "experiment", "technique", "version",
                         "quantization_method", "quant_type", "recipe", "weight", "weights", "activation",
                         "activations", "data_type", "datatype", "numerics"}),
    "total_time": frozenset({"total_time", "eval_time", "time_s", "time", "runtime", "elapsed", "wall_time",
                             "duration", "processing_time", "processing_time_s", "total_time_s", "elapsed_s"}),
}
_EXACT_ORDER = ("sample_id", "trial", "seed", "value", "state", "n", "correct", "num_classes", "params",
                "context_length", "tokens_per_sample", "batch", "output", "task", "model", "config", "total_time")
_GENERIC_LABELS = frozenset({"name", "label", "type", "setting", "run", "experiment"})
AMBIGUOUS_IDS = frozenset({"sample", "example", "id", "idx", "item"})
"""Names that are sample ids only when the cells look like ids (not a file-format column named `Example`)."""

_INTERVAL_SUFFIX = re.compile(r"_(low|high|lo|hi|lower|upper|ci_low|ci_high|ci|err|std|stderr|sem)$")
_SAMPLE_TIME = re.compile(r"(^|_)(s|sec|secs|seconds|time|ms)_per_(sample|example|item|question)($|_)|"
                          r"^per_sample_(s|sec|time|ms)$|^time_per_(sample|example)")
_LATENCY = re.compile(r"(^|_)(latency|ttft|tpot|itl)($|_)|(^|_)ms_(per_)?(tok|token|tokens)($|_)|"
                      r"time_per_(output_)?token|per_token_(time|latency)|^time_ms$|^ms$")
_THROUGHPUT = re.compile(r"throughput|(^|_)(tokens?|toks?|t|samples?|samp|it|items?|images?|img|req|requests?|"
                         r"queries)_(s|sec|second|seconds)($|_)|tokens_per_s|tok_per_s|samples_per_s|^tps$|^qps$|"
                         r"per_sec$|per_second$")
_THROUGHPUT_UNITS = frozenset({"t/s", "tok/s", "toks/s", "tokens/s", "token/s", "it/s", "samples/s", "sample/s",
                               "img/s", "images/s", "req/s", "qps", "tps"})
_TIME_UNITS = frozenset({"ms", "s", "sec", "us", "\u00b5s", "\u03bcs", "min", "ns"})
_MEMORY_UNITS = frozenset({"gb", "mb", "gib", "mib", "kb", "kib", "g", "tb", "bytes"})
_PARAM_UNITS = frozenset({"b", "m", "k", "t"})


def normalize(name: str) -> str:
    """Lower-case a column name and turn every run of other characters into '_'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _is_benchmark(norm: str) -> bool:
    return norm in BENCHMARKS or norm.startswith(BENCHMARK_PREFIXES)


def infer_role(name: str, kind: str = "numeric") -> str:
    """The role a column's name suggests; unknown numeric columns are 'metric', other unknown columns 'text'.

    `kind` is the column's content: 'numeric', 'text' or 'empty'.
    """
    norm = normalize(name)
    tokens = set(norm.split("_"))
    for role in _EXACT_ORDER:
        if norm in _EXACT[role]:
            return role
    if norm in QPARAM_NAMES:
        return "qparam"
    if norm in CONDITION_NAMES:
        return "condition"
    if (_INTERVAL_SUFFIX.search(norm) and norm not in ("ppl", "perplexity")) or tokens & {"stderr", "sem"} \
            or {"std", "err"} <= tokens or norm.startswith(("std_err", "stderr", "stdev")):
        return "interval"
    if re.search("[\u0394\u2206\u03b4]", name) or tokens & MEASURE_WORDS:
        return "measure"
    words = norm.split("_")
    if "bits_per_byte" in norm or "bpb" in tokens or "byte_perplexity" in norm or tokens & {"ln", "log", "nll"} \
            or words.count("ppl") + words.count("perplexity") >= 2:
        return "measure"   # a log, a ratio or a difference of perplexities (PPL(Q)/PPL(base)), not a perplexity
    if tokens & {"bits", "bit", "wbits", "nbits", "bitwidth", "bpw"} or norm in ("bit_width", "w_bits"):
        return "bits"
    if tokens & {"sparsity", "pruning", "prune", "pruned"}:
        return "sparsity"
    if _SAMPLE_TIME.search(norm):
        return "sample_time"
    if _LATENCY.search(norm):
        return "latency"
    if _THROUGHPUT.search(norm):
        return "throughput"
    if tokens & {"energy", "joules"}:
        return "energy"
    if tokens & {"power", "watts"}:
        return "power"
    if tokens & MEMORY_WORDS and not tokens & {"batch", "group", "block", "beam", "sample"}:
        return "memory"
    if tokens & {"ppl", "perplexity"} or norm in PPL_DATASETS:
        return "ppl"
    accuracy_like = bool(tokens & {"acc", "accuracy", "top1", "top5"})
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
    if _is_benchmark(norm) or tokens & {"pass", "rouge", "rougel", "bleu", "chrf", "mcc"}:
        return "score"
    if kind == "numeric" and GPU_NAME.match(norm):
        return "timing"
    return "metric" if kind == "numeric" else "text"


def assign_roles(columns: Mapping[str, str], explicit: Mapping[str, str],
                 hints: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each column name (with its content kind) to a role; `explicit` ({role: column}) wins over `hints`
    ({column: role}, what a reader knows), which win over inference from the name."""
    roles = {name: infer_role(name, kind) for name, kind in columns.items()}
    for name, role in (hints or {}).items():
        if name in roles:
            roles[name] = role
    for role, column in explicit.items():
        if column in roles:
            roles[column] = role
    for name, role in roles.items():
        if role in MEASUREMENT_ROLES and columns[name] == "text" and explicit.get(role) != name:
            roles[name] = "text"
    return roles


def _labels_look_like_configs(raw: tuple[str, ...]) -> bool:
    distinct = {cell.strip() for cell in raw if cell.strip()}
    if len(distinct) < 2:
        return False
    recognised = sum(classify(cell).kind != OTHER for cell in distinct)
    return recognised * 2 >= len(distinct)


def _labels_look_like_benchmarks(raw: tuple[str, ...]) -> bool:
    distinct = {normalize(cell) for cell in raw if cell.strip()}
    return bool(distinct) and sum(_is_benchmark(d) or d in PPL_DATASETS for d in distinct) * 2 > len(distinct)


def _look_like_ids(column: Column, identity: tuple[str, ...] | None) -> bool:
    """Sample ids: integers or id-like strings that never repeat within a config/model."""
    cells = [cell.strip() for cell in column.raw]
    if any(classify(cell).kind != OTHER for cell in set(cells) if cell):
        return False
    keys = list(zip(identity, cells)) if identity else cells
    return len(set(keys)) == len(keys)


def refine_roles(table: Table, roles: dict[str, str], explicit: Mapping[str, str]) -> dict[str, str]:
    """Adjust name-based roles with what the cells say (units, integer seeds, id-like cells, label columns)."""
    pinned = set(explicit.values()) | set(table.hints)
    roles = dict(roles)
    for name, column in table.columns.items():
        if name in pinned:
            continue
        role, norm = roles[name], normalize(name)
        values = column.values[np.isfinite(column.values)]
        unit = column.unit.lower()
        if role == "seed" and values.size and not np.all(values == np.round(values)):
            roles[name] = "score"   # a benchmark named SEED (SEED-Bench), not a random seed
        elif role in ("memory", "metric") and norm in ("size", "sizes", "model_size") and unit in _PARAM_UNITS:
            roles[name] = "params"  # 'Size' holding 7B, 1.1B: the model's parameter count
        elif role in ("metric", "timing") and unit:
            if unit in _THROUGHPUT_UNITS:
                roles[name] = "throughput"
            elif unit in _TIME_UNITS:
                roles[name] = "latency"
            elif unit in _MEMORY_UNITS:
                roles[name] = "memory"
            elif unit == "x":
                roles[name] = "measure"
    configs = [n for n, r in roles.items() if r == "config"]
    identity = tuple(map(" ".join, zip(*(table.columns[n].raw for n in configs + [n for n, r in roles.items()
                                                                                   if r == "model"])))) or None
    for name, column in table.columns.items():
        if name in pinned:
            continue
        role = roles[name]
        if role == "sample_id" and normalize(name) in AMBIGUOUS_IDS and not _look_like_ids(column, identity):
            roles[name] = "text"
            role = "text"
        if role == "config" and normalize(name) in _GENERIC_LABELS and _labels_look_like_benchmarks(column.raw):
            roles[name] = "task"   # a 'name' column listing hellaswag, piqa, ...: the benchmark, not a config
            configs.remove(name)
            continue
        if role == "text" and not configs and _labels_look_like_configs(column.raw):
            roles[name] = "config"
            configs.append(name)
        elif role == "text" and "task" not in roles.values() and _labels_look_like_benchmarks(column.raw):
            roles[name] = "task"
    return roles
