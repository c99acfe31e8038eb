"""The measurements a run can take, by name: each step reads one model (and the reference where it compares) and
returns record data plus the settings that produced it. The engine calls them variant by variant; the invariants
read the records they write (`qcheck.records`), never the models.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from qcheck.engine import RunContext
    from qcheck.variants import Variant


@dataclass
class Subject:
    """What a step measures: the variant's name, its model, and the built Variant (None for the reference)."""

    name: str
    model: nn.Module | None
    variant: Variant | None = None
    states: Any = field(default=None, repr=False)
    """The subject's decoder states per window batch (`qcheck.measure.head.StatesCache`), shared by perplexity and
    fidelity; dropped with the subject."""

    def __post_init__(self) -> None:
        if self.states is None and self.model is not None:
            from qcheck.measure.head import StatesCache

            self.states = StatesCache()

    @property
    def is_reference(self) -> bool:
        from qcheck.variants import REFERENCE

        return self.name == REFERENCE


StepFn = Callable[["RunContext", Subject], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class Step:
    """One measurement: its function and whether it runs after the variant's model is released (it builds a model
    of its own, so two models, never more, are alive)."""

    name: str
    run: StepFn
    summary: str
    after_release: bool = False
    model_free: bool = False
    """Reads no model (a user's result files): a variant is not built for it alone."""
    timed: bool = False
    """Times the model: it runs torch's own kernels, never `qcheck.measure.half_cpu`'s fp32 products."""


STEPS: dict[str, Step] = {}
ORDER = ("build", "weights", "perplexity", "perplexity_short", "lm_eval_perplexity", "fidelity", "choice",
         "generation", "robustness", "latency_casts", "energy", "latency", "rtn_perplexity", "lm_eval_results")
"""The order a variant's measurements run in (cheap evidence first; timing last on a quiet device)."""


def step(name: str, summary: str, *, after_release: bool = False, model_free: bool = False, timed: bool = False
         ) -> Callable[[StepFn], StepFn]:
    def register(fn: StepFn) -> StepFn:
        STEPS[name] = Step(name, fn, summary, after_release, model_free, timed)
        return fn
    return register


# ---------------------------------------------------------------------------------------------------------- build

@step("build", "the variant's plan, per-layer manifest, build time, stored bytes, placement and reference fingerprint")
def _build(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.timing import placement_problems
    from qcheck.quant.tensor_stats import model_stored_bytes

    data: dict[str, Any] = {"weights_mb": round(model_stored_bytes(s.model) / 2**20, 2),
                            "placement": dict(list(placement_problems(s.model, ctx.device).items())[:200]),
                            "tensors": sum(1 for _ in s.model.parameters()) + sum(1 for _ in s.model.buffers()),
                            "device": _placed_on(ctx, s.model)}
    if s.is_reference:
        data.update(reference=True, plan={"name": s.name, "dtype": ctx.reference_dtype}, model=ctx.describe_model(),
                    fingerprint=ctx.reference_fingerprint)
        return data, {}
    v = s.variant
    data.update(reference=False, seconds=round(v.seconds, 3), dtype_name=v.dtype_name, is_ptq=v.is_ptq,
                manifest=v.report.to_dict())
    if v.is_ptq:  # qcheck's own quantize guards the reference itself; a backend is fingerprinted after it ran
        data.update(fingerprint_before=ctx.reference_fingerprint, fingerprint_after=ctx.fingerprint_reference())
        data["plan"] = {"name": v.name, "ptq": v.spec, "backend": v.report.backend, **v.report.plan}
        data["backend"] = {"name": v.backend.backend, "details": dict(v.backend.details),
                           "calibration": v.backend.details.get("calibration")}
    else:
        data["plan"] = v.plan.to_dict()
    return data, {}


def _placed_on(ctx: RunContext, model: nn.Module) -> str:
    """Where the subject's tensors belong: the run's device, or the device map accelerate placed it with."""
    from qcheck.inputs.placement import describe, summarize
    from qcheck.quant.offload import is_dispatched

    if not is_dispatched(model):
        return str(ctx.device)
    placed = describe(summarize(model, ctx.options.placement())).removeprefix("device map ")
    return f"the devices of its device map ({placed})"


# ---------------------------------------------------------------------------------------------------------- weights

@step("weights", "quantization evidence: per-layer grid, change, SQNR against the reference; logits on a probe")
def _weights(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.weights import plan_evidence, quantization_evidence

    ids = ctx.inputs.probe_ids()
    settings = {"probe_tokens": int(ids.numel()), "probe": "the first tokens of the evaluation text"}
    v = s.variant
    if v.is_ptq:
        from qcheck.invariants.ptq import ptq_evidence

        return {"ptq": ptq_evidence(ctx.reference_model, v.backend, input_ids=ids)}, settings
    grids: dict = {}
    evidence = quantization_evidence(ctx.reference_model, s.model, v.report, input_ids=ids, grids=grids)
    evidence["plan_followed"] = plan_evidence(s.model, v.plan, reference=ctx.reference_model, grids=grids)
    return evidence, settings


# ---------------------------------------------------------------------------------------------------------- perplexity

def _perplexity_of(ctx: RunContext, model: nn.Module, context: int, states: Any = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.perplexity import perplexity_of_ids

    text = ctx.inputs.eval_text()
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    # windows shorter than the run's context are batched so a batch holds about as many tokens as one full window
    batch = ctx.batch_size("perplexity") * max(1, ctx.options.context // max(context, 1))
    result = perplexity_of_ids(model, text.ids, context=context, batch_size=batch, pad_id=pad, states_cache=states)
    result.n_chars, result.n_bytes, result.n_words = text.n_chars, text.n_bytes, text.n_words
    # the vocabulary rides along: perplexity_order reads whether the reference predicts better than a uniform guess
    return {**result.to_dict(), "vocab_size": ctx.vocab_size}, {"context": context, "stride": context,
                                                                  **text.describe()}


@step("perplexity", "token-weighted strided perplexity with per-window and per-block NLL")
def _perplexity(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    return _perplexity_of(ctx, s.model, ctx.options.context, s.states)


@step("perplexity_short", "the reference's perplexity at context 128 on the same tokens (context sensitivity)")
def _perplexity_short(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.budget import SHORT_CONTEXT
    from qcheck.measure.perplexity import model_context

    data, settings = _perplexity_of(ctx, s.model, SHORT_CONTEXT)
    data["model_max_context"] = model_context(s.model)
    return data, settings


@step("lm_eval_perplexity", "lm-evaluation-harness's word_perplexity, byte_perplexity and bits_per_byte "
                            "(loglikelihood_rolling, its default settings) on the whole WikiText-2 pages at the "
                            "run's slice")
def _lm_eval_perplexity(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    """lm-eval's `wikitext` figures of the subject, so they sit beside a paper's.

    The documents are WikiText-2 test pages chosen from the slice's start (`qcheck.inputs.documents.PAGE_RULE`):
    whole pages in file order from the page holding the slice's first character, pages longer than the budget
    passed over until one fits, then pages added while their lm-eval tokens stay within the budget (--tokens; on
    CPU at most CPU_LM_EVAL_TOKENS). With --text the run's slice, cut to the budget, is one document: lm-eval's
    definitions apply to any text, and per byte they compare models whose tokenizers differ; the record says it
    is not WikiText-2. The settings name the pages, tokens, words and bytes."""
    from qcheck.measure.budget import CPU_LM_EVAL_TOKENS
    from qcheck.measure.lm_eval_compat import lm_eval_perplexity

    budget = ctx.budget.lm_eval_tokens
    docs, settings = ctx.inputs.lm_eval_documents(budget)
    if not docs:
        raise NotApplicable(f"no whole WikiText-2 page has at most {budget} lm-eval tokens (the budget: --tokens, "
                            f"at most {CPU_LM_EVAL_TOKENS} on CPU): give more --tokens")
    return lm_eval_perplexity(s.model, ctx.tokenizer, docs), settings


@step("rtn_perplexity", "qcheck's own RTN at a calibrated PTQ variant's bits and group size, for the differential",
      after_release=True)
def _rtn_perplexity(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.quant.apply import quantize
    from qcheck.variants import free_memory

    build = ctx.store.data(s.name, "build")
    manifest = build["manifest"]
    bits = {r.get("bits") for r in manifest["layers"] if r.get("applied")}
    group = manifest["plan"].get("group_size")
    backend = manifest.get("backend", "")
    calibrated = backend.startswith(("llmcompressor:gptq", "llmcompressor:awq")) or \
        manifest["plan"].get("format") == "compressed-tensors"
    if bits != {4} or not group or not calibrated:
        raise NotApplicable(f"{s.name}: the RTN differential applies to calibrated 4-bit grouped variants "
                            f"(bits {sorted(b for b in bits if b)}, group {group}, backend {backend})")
    name = f"rtn-w4g{group}"
    model, _ = quantize(ctx.reference_model, {"name": name, "default": {"format": "int", "bits": 4,
                                                                        "group_size": group},
                                              "override": [{"match": "lm_head", "format": "keep"}]})
    try:
        data, settings = _perplexity_of(ctx, model, ctx.options.context)
    finally:
        del model
        free_memory()
    return {**data, "rtn_variant": name, "calibration": (build.get("backend") or {}).get("calibration")}, settings


class NotApplicable(Exception):
    """A step that does not apply to this subject: recorded as SKIPPED with the message."""


# ---------------------------------------------------------------------------------------------------------- fidelity

REFERENCE_STATES_BYTES = 512 * 2**20
"""The most memory the reference's kept fidelity states may take (fp32 bound): 8B's 4,096-wide states for 32k tokens;
beyond it the reference's decoder pass is repeated per variant instead."""


@step("fidelity", "next-token KL(reference || variant), top-1 agreement and |dp| per scored token")
def _fidelity(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.fidelity import fidelity_many, fidelity_to_record

    text = ctx.inputs.eval_text()
    tokens = ctx.budget.fidelity_tokens
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
    hidden = int(getattr(ctx.reference_model.config, "hidden_size", 0) or 0)
    keep = hidden and min(tokens, len(text.ids)) * hidden * 4 <= REFERENCE_STATES_BYTES
    result = fidelity_many(ctx.reference_model, {s.name: s.model}, text.ids[:tokens], context=ctx.options.context,
                           batch_size=ctx.batch_size("fidelity"), pad_id=pad,
                           reference_cache=ctx.reference_states if keep else None, states_cache=s.states)[s.name]
    data = fidelity_to_record(result)
    data["extra"]["decoder_batches_reused"] = s.states.hits if s.states is not None else 0  # from perplexity's pass
    return data, {"context": ctx.options.context, **text.describe(), "tokens": tokens}


# ---------------------------------------------------------------------------------------------------------- tasks

@step("choice", "ARC-Easy multiple-choice log-likelihood scoring with per-question records")
def _choice(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.choice import score_multiple_choice

    data = ctx.inputs.arc(ctx.budget.choice_questions)
    result = score_multiple_choice(s.model, ctx.tokenizer, data.items, batch_size=ctx.batch_size("choice"))
    return result.to_metric(), {k: v for k, v in data.describe().items() if k != "ids"}


@step("generation", "greedy GSM8K answers with the few-shot prompt, their \\boxed{} status per prompt")
def _generation(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.errors import ConfigError
    from qcheck.measure.generation import GenerationSettings, boxed_records, decoding_cache, generate_answers

    data = ctx.inputs.gsm8k(ctx.budget.generation_prompts)
    settings = GenerationSettings(max_new_tokens=ctx.budget.new_tokens, batch_size=ctx.batch_size("generation"),
                                  prompt=ctx.budget.prompt,
                                  chat_template={"auto": None, "on": True, "off": False}[ctx.options.chat_template],
                                  cache=decoding_cache(ctx.options.decoding, gpu=ctx.gpu))
    try:
        run = generate_answers(s.model, ctx.tokenizer, [p.question for p in data.items], settings,
                               ids=[p.id for p in data.items])
    except ConfigError as exc:  # prompts and budget past the model's positions: skipped, saying what to pass
        raise NotApplicable(f"{s.name}: {exc}") from None
    return ({"run": run.to_dict(), "boxed": boxed_records(run, [p.gold for p in data.items])},
            {**{k: v for k, v in data.describe().items() if k != "ids"}, **settings.to_dict()})


@step("robustness", "FGSM then PGD on the clean-correct ARC-Easy questions, per-question records")
def _robustness(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure import robustness as R
    from qcheck.measure.budget import ROBUSTNESS_MAX_TOKENS

    refused = R.attack_memory_refusal(s.model)
    if refused:
        raise NotApplicable(f"{s.name}: {refused}")
    items, info = ctx.inputs.robustness_items(ctx.budget.robustness_questions, ROBUSTNESS_MAX_TOKENS)
    pad = ctx.tokenizer.pad_token_id or 0
    planned = R.attack_batch_size(s.model, ROBUSTNESS_MAX_TOKENS)
    ctx.note_in_flight(questions=len(items), planned_batch_size=planned)
    evaluation, ran_out = R.with_smaller_batches(
        lambda batch: R.evaluate_robustness(s.model, items, R.ROBUSTNESS_ATTACK, pad_id=pad, variant=s.name,
                                            data=info, repeats=2, batch_size=batch), planned,
        note=lambda batch, ran_out: ctx.note_in_flight(batch_size=batch, out_of_memory_at=ran_out))
    batch = planned // 2 ** len(ran_out)
    return evaluation.to_dict(), {"data": info, "attack": R.ROBUSTNESS_ATTACK.to_dict(), "batch_size": batch,
                                  "planned_batch_size": planned, "out_of_memory_at": ran_out}


# ---------------------------------------------------------------------------------------------------------- timing

@step("latency", "forward latency at the run's shape (CUDA events or perf_counter, warm-up apart), the variant's "
                 "kind, arithmetic floor, memory; a profile by kernel when over the slowdown bound", timed=True)
def _latency(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.latency import measure_latency

    return measure_latency(ctx, s)


@step("latency_casts", "the reference cast to fp16 / bf16 and under autocast, timed at the run's shape (GPU)",
      timed=True)
def _latency_casts(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.latency import measure_reference_casts

    return measure_reference_casts(ctx)


@step("energy", "energy per token of the reference in fp32 and fp16 from NVML's counter (GPU)", timed=True)
def _energy(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    from qcheck.measure.latency import measure_reference_energy

    return measure_reference_energy(ctx)


# ---------------------------------------------------------------------------------------------------------- evidence

@step("lm_eval_results", "the user's lm-evaluation-harness results for this variant (--lm-eval-results), read "
                         "with their n and stderr, and all given files linted as one comparison", model_free=True)
def _lm_eval_results(ctx: RunContext, s: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    files = [f for f in ctx.lm_eval_files if f.variant == s.name]
    if not files:
        raise NotApplicable(f"no --lm-eval-results file names {s.name}")
    from qcheck.lint import lint_paths

    lint = [finding.to_dict() for finding in lint_paths([f.path for f in ctx.lm_eval_files])]
    return ({"files": [f.to_dict() for f in files], "lint": lint, "linted": [f.path for f in ctx.lm_eval_files]},
            {"paths": [f.path for f in files]})

