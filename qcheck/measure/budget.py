"""What a run measures on which device: slice sizes and the variants each costly measurement covers on a CPU.

On a GPU every variant gets every measurement the selected checks need. On a CPU the slow measurements cover the
reference, `w4g64` and every variant the user added (plans, PTQ backends); lm-eval's WikiText perplexity covers the
reference and the user's variants; naming a variant in --variants measures it. The skip reason says so, and the
checks that need a skipped measurement skip with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qcheck.variants import DEFAULT_VARIANTS, REFERENCE

CPU_CHOICE_QUESTIONS = 30
CPU_CHOICE_VARIANTS = ("w4g64",)
CPU_PROMPTS = 8
CPU_NEW_TOKENS = 24
CPU_PROMPT = "gsm8k_3shot_direct"
CPU_GENERATION_VARIANTS = ("w4g64",)
GPU_NEW_TOKENS = 256
GPU_PROMPT = "gsm8k_3shot"
CPU_FIDELITY_TOKENS = 2048
"""Fidelity's tokens on CPU, for every variant: the first 2,048 of perplexity's 4,096, whose decoder states the
perplexity step keeps, so fidelity adds only the output heads and the KL (about 5 s a variant on the 2-core CI
machine). 16-bit products run as fp32 GEMMs there (`qcheck.measure.half_cpu`: bf16 perplexity of 4,096 tokens 28 s,
130 s with torch's kernels)."""
ROBUSTNESS_VARIANTS = (REFERENCE, "int8", "w4g64", "bf16")
ROBUSTNESS_GPU_ONLY = ("fp16",)
CPU_ROBUSTNESS_VARIANTS = ("w4g64",)
"""Built-in variants attacked on CPU besides the reference and the user's variants (PGD costs ~40 s per variant
there; bf16's emulated matmuls ~80 s). Every ROBUSTNESS_VARIANTS entry keeps its test id, skipped with the reason."""
CPU_ROBUSTNESS_QUESTIONS = 12
ROBUSTNESS_MAX_TOKENS = 64
CPU_TIMED = (REFERENCE, "int8", "w4g64")
"""Variants timed on CPU: fp32 and two simulated ones (fp32 kernels). fp16/bf16 matmuls are emulated on most CPUs
and bitsandbytes' CPU path is slow."""
CPU_LM_EVAL_TOKENS = 2048
"""lm-eval's WikiText perplexity scores whole pages within this many tokens on CPU (--tokens on a GPU): one forward
pass of at most 2,048 tokens per subject. Measured on the 2-core CI machine under load: page 0 (1,397 tokens) of
SmolLM2 in fp32 took 45 s where qcheck's perplexity of 4,096 tokens took 119 s in the same process."""
SHORT_CONTEXT = 128
GPU_ONLY = {"latency_casts": "reference casts are timed for the latency ordering on a GPU only",
            "energy": "energy is read from NVML on a GPU only"}


@dataclass(frozen=True)
class Budget:
    """The slice sizes of one run on one device."""

    gpu: bool
    samples: int
    prompts: int
    tokens: int
    generation_tokens: int | None = None
    """--new-tokens: the greedy budget per prompt on any device (None: GPU_NEW_TOKENS / CPU_NEW_TOKENS)."""
    generation_prompt: str | None = None
    """--prompt: the few-shot prompt on any device (None: GPU_PROMPT / CPU_PROMPT)."""

    @property
    def choice_questions(self) -> int:
        return self.samples if self.gpu else min(self.samples, CPU_CHOICE_QUESTIONS)

    @property
    def generation_prompts(self) -> int:
        return self.prompts if self.gpu else min(self.prompts, CPU_PROMPTS)

    @property
    def fidelity_tokens(self) -> int:
        return self.tokens if self.gpu else min(self.tokens, CPU_FIDELITY_TOKENS)

    @property
    def lm_eval_tokens(self) -> int:
        return self.tokens if self.gpu else min(self.tokens, CPU_LM_EVAL_TOKENS)

    @property
    def robustness_questions(self) -> int:
        return self.samples if self.gpu else min(self.samples, CPU_ROBUSTNESS_QUESTIONS)

    @property
    def new_tokens(self) -> int:
        if self.generation_tokens is not None:
            return self.generation_tokens
        return GPU_NEW_TOKENS if self.gpu else CPU_NEW_TOKENS

    @property
    def prompt(self) -> str:
        if self.generation_prompt is not None:
            return self.generation_prompt
        return GPU_PROMPT if self.gpu else CPU_PROMPT


def robustness_variants(names: list[str], gpu: bool) -> list[str]:
    """The variants attacked: the reference, the built-in ROBUSTNESS_VARIANTS (+ fp16 on a GPU), every user variant."""
    wanted = ROBUSTNESS_VARIANTS + (ROBUSTNESS_GPU_ONLY if gpu else ())
    return list(dict.fromkeys([REFERENCE] + [n for n in names if n in wanted or n not in DEFAULT_VARIANTS]))


_XDIST = {"workers": 1}


def share_with_xdist(workers: int) -> None:
    """Set by the plugin in a pytest-xdist worker of a qcheck run (and back to 1 when it ends): how many workers
    share the machine. Not read from xdist's environment variables, which nested pytest runs inherit."""
    _XDIST["workers"] = max(1, int(workers))


def xdist_workers() -> int:
    """How many pytest-xdist workers this process shares the machine with, itself included (1 outside xdist)."""
    return _XDIST["workers"]


def not_measured(measurement: str, variant: str, *, gpu: bool, options: Any, context: int) -> str | None:
    """Why `measurement` of `variant` is not taken in this run, or None when it is."""
    from qcheck.measure.steps import STEPS

    builtin = variant in DEFAULT_VARIANTS
    step = STEPS.get(measurement)
    if step is not None and step.timed and xdist_workers() > 1:
        return (f"not timed under pytest-xdist ({xdist_workers()} workers): the other workers' work shares the "
                "device, so a timing would time the contention; run without -n, or spread the variants with "
                "--workers N (--qcheck-workers N), which takes the timings afterwards alone")
    if measurement in GPU_ONLY and not gpu:
        return f"{GPU_ONLY[measurement]}; this run has no CUDA device"
    if measurement == "perplexity_short" and context <= SHORT_CONTEXT:
        return f"the run's context ({context}) is not above {SHORT_CONTEXT}, the short context it is compared with"
    if gpu:
        return None
    if measurement == "choice" and builtin and variant not in CPU_CHOICE_VARIANTS:
        return (f"ARC-Easy scoring on CPU runs only {', '.join(CPU_CHOICE_VARIANTS)} besides {REFERENCE} and the "
                "variants you add (every variant on a GPU)")
    if measurement == "generation" and builtin and variant not in CPU_GENERATION_VARIANTS:
        return (f"generation on CPU is slow: the format check runs only {', '.join(CPU_GENERATION_VARIANTS)} besides "
                f"{REFERENCE} and the variants you add on CPU (every variant on a GPU)")
    if measurement == "robustness" and builtin and variant != REFERENCE and variant not in CPU_ROBUSTNESS_VARIANTS \
            and options.variants is None:
        return (f"robustness on CPU attacks only {', '.join(CPU_ROBUSTNESS_VARIANTS)} besides {REFERENCE} and the "
                "variants you add (PGD is slow there); name it in --variants or run on a GPU")
    if measurement == "lm_eval_perplexity" and builtin and options.variants is None:
        return (f"lm-eval's WikiText perplexity on CPU scores only {REFERENCE} and the variants you add by default "
                f"(one forward pass over up to {CPU_LM_EVAL_TOKENS} tokens per variant); name {variant} in "
                "--variants or run on a GPU")
    if measurement == "latency" and variant not in CPU_TIMED:
        return (f"{variant} is not timed on CPU (CPU timing covers {', '.join(CPU_TIMED)}: 16-bit matmuls are "
                "emulated on most CPUs); GPU runs time every variant")
    return None
