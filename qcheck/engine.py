"""The run engine: measure once, variant by variant, into one record store.

The reference is loaded and measured first; then each variant is built, measured for everything the selected
checks need, recorded and released before the next one is built. Memory is the reference plus one variant (two
models where a measurement compares them) whatever the number of variants. A measurement that fails becomes an
ERROR record for the checks that need it; one that does not apply here becomes a SKIPPED record with the reason.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qcheck import timeline
from qcheck.errors import ConfigError, QCheckError
from qcheck.options import RunOptions
from qcheck.records import Record, RecordStatus, RecordStore
from qcheck.variants import DEFAULT_VARIANTS, REFERENCE

Needs = Mapping[str, Iterable[str]]
"""Variant name -> measurement names the selected checks read."""


@dataclass
class RunContext:
    """Everything a measurement step reads: options, device, the reference, the data slices, the store so far."""

    options: RunOptions
    device: Any
    loaded: Any
    variants: Any
    inputs: Any
    store: RecordStore
    reference_fingerprint: str = ""
    lm_eval_files: list[Any] = field(default_factory=list)
    _budget: Any = field(default=None, repr=False)
    reference_states: dict[Any, Any] = field(default_factory=dict, repr=False)
    """The reference's hidden states per fidelity window, kept across variants (see `fidelity_many`)."""

    def note_in_flight(self, **facts: Any) -> None:
        """Facts of the step now running (a planned batch, a retry), kept with the records' `cut_in` should the run
        be stopped before the step ends, so an interrupted report says how far its last step had got."""
        self.store.meta.setdefault("in_flight", {}).update(facts)

    @property
    def reference_model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.reference_model.config.vocab_size)

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def reference_dtype(self) -> str:
        """The dtype the reference was loaded in ("fp32" unless --reference-dtype said otherwise)."""
        from qcheck.quant.apply import compute_dtype

        return compute_dtype(self.reference_model)

    @property
    def budget(self) -> Any:
        if self._budget is None:
            from qcheck.measure.budget import Budget

            self._budget = Budget(self.gpu, self.options.samples, self.options.n_prompts, self.options.tokens,
                                  self.options.new_tokens, self.options.prompt)
        return self._budget

    def batch_size(self, measurement: str) -> int:
        """Batch sizes per measurement: 1 window / 16 questions / 8 prompts on a CPU; more on a GPU, where generation
        is sized by free memory (0)."""
        cpu = {"perplexity": 1, "fidelity": 1, "choice": 16, "generation": 8}
        gpu = {"perplexity": 8, "fidelity": 8, "choice": 64, "generation": 0}
        return (gpu if self.gpu else cpu)[measurement]

    def describe_model(self) -> dict[str, Any]:
        return self.loaded.describe()

    def fingerprint_reference(self) -> str:
        from qcheck.quant.tensor_stats import weight_fingerprint

        return weight_fingerprint(self.reference_model)


def resolve_device(device: str) -> Any:
    """The torch device of `--device` (auto: cuda when available); cuda without a GPU is a usage error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise QCheckError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    return torch.device(device)


def reference_dtype_of(options: RunOptions) -> str:
    """The dtype the reference is loaded in: --reference-dtype, or with `auto` the checkpoint's (a config read)."""
    from qcheck.inputs.models import checkpoint_dtype

    return checkpoint_dtype(options.model) if options.reference_dtype == "auto" else options.reference_dtype


def builtin_names(options: RunOptions, reference_dtype: str | None = None) -> list[str]:
    """The run's built-in variants: --variants as given, else the defaults less the 16-bit cast to the reference's
    own dtype (with a bf16 reference the "bf16" variant would be the reference itself: nothing quantized, a second
    copy of the model, and checks judging a model against itself). A --variants naming that cast is bad input."""
    dtype = reference_dtype_of(options) if reference_dtype is None else reference_dtype
    if options.variants is None:
        return [n for n in DEFAULT_VARIANTS if n != dtype]
    if dtype != "fp32" and dtype in options.variants:
        how = ("read from the checkpoint's config by --reference-dtype auto" if options.reference_dtype == "auto"
               else f"--reference-dtype {options.reference_dtype}")
        raise ConfigError(f"--variants names {dtype}, the reference's own dtype ({how}): that variant would be the "
                          f"reference itself, with nothing quantized. Drop {dtype} from --variants, or compare "
                          "against an fp32 reference (--reference-dtype fp32)", field="--variants")
    return list(options.variants)


def variant_names(options: RunOptions) -> list[str]:
    """The run's variants in order: built-in selection, then plan files, then PTQ specs (by their run names)."""
    from pathlib import Path

    from qcheck.quant.backends import ptq_variant_name
    from qcheck.quant.plan import Plan

    names = builtin_names(options)
    for path in options.plans:
        try:
            plan = Plan.load(path)
            names.append(plan.name if plan.name != "plan" else Path(path).stem)
        except (QCheckError, OSError):  # reported with its file when the variant set is built
            names.append(Path(path).stem)
    for spec in options.ptq:
        try:
            names.append(ptq_variant_name(spec))
        except ConfigError:
            names.append(spec)
    return names


_OPENED: dict[tuple[RunOptions, int | None], RunContext] = {}


def _differing_fields(a: RunOptions, b: RunOptions) -> list[str]:
    """The fields in which two runs' options differ (compared as plain values), for the second-context message."""
    left, right = a.to_dict(), b.to_dict()
    return [name for name in left if left[name] != right.get(name)]


def open_run(options: RunOptions, device_index: int | None = None) -> RunContext:
    """Load the reference, validate every variant and input (errors here are bad input: exit 2 before anything
    runs), and return the context the steps read (the same context for the same options in one process: `qcheck
    run` validates before pytest starts, and the plugin measures with what it validated)."""
    if (options, device_index) in _OPENED:
        return _OPENED[(options, device_index)]
    opened = next((o for o, index in _OPENED if index == device_index), None)
    if opened is not None:
        import sys

        print(f"qcheck: another run context opens in this process (its options differ from an open one's in "
              f"{', '.join(_differing_fields(opened, options))}): its memory pre-check counts what the open one "
              "holds", file=sys.stderr)
    import torch

    from qcheck.inputs.models import load_model
    from qcheck.inputs.placement import summarize
    from qcheck.inputs.run_inputs import RunInputs
    from qcheck.quant.offload import input_device, is_dispatched
    from qcheck.quant.tensor_stats import weight_fingerprint
    from qcheck.variants import VariantSet

    placement = options.placement()
    device = resolve_device(options.device)
    if placement is not None and not placement.spreads:
        device = resolve_device(placement.one_device()) if placement.one_device() in ("cpu", "cuda") \
            else torch.device(placement.one_device())
    if device_index is not None and device.type == "cuda":
        device = torch.device("cuda", device_index)
    check_prompt(options)
    dtype = reference_dtype_of(options)
    names = builtin_names(options, dtype)
    torch.manual_seed(0)
    check_memory(options, device, dtype)
    timeline.mark("memory_checked")
    if placement is not None and placement.spreads:
        placement = with_default_budget(placement, device)
    loaded = load_model(options.model, dtype=dtype, device=device, cache=True, placement=placement,
                        offload_folder=offload_dir(options, "reference"))
    dispatched = is_dispatched(loaded.model)
    if dispatched:
        device = input_device(loaded.model)
    check_reference_finite(loaded.model)
    check_chat_template(options, loaded.tokenizer, loaded.source)
    check_context(options, loaded.model.config, loaded.source)
    timeline.mark("loaded")
    fingerprint = weight_fingerprint(loaded.model)
    variants = VariantSet.from_names(loaded.model, names, list(options.plans), ptq_specs=list(options.ptq),
                                     tokenizer=loaded.tokenizer, device=str(device),
                                     reload=_reloader(options, loaded.model) if dispatched else None,
                                     reference_fingerprint=fingerprint)
    variants.validate()
    inputs = RunInputs(options, loaded.tokenizer, int(loaded.model.config.vocab_size))
    store = RecordStore()
    store.meta.update(model=loaded.describe(), device=str(device), options=options.to_dict(),
                      seeds={"torch": 0, "probe_inputs": 0, "bootstrap": 0},
                      placement=summarize(loaded.model, placement), precision=precision_facts(options, dtype, device))
    store.variants = [REFERENCE, *variants.names]
    from qcheck.inputs.lm_eval_results import read_lm_eval_file

    lm_eval_files = [read_lm_eval_file(spec, [REFERENCE, *variants.names]) for spec in options.lm_eval_results]
    ctx = RunContext(options, device, loaded, variants, inputs, store, fingerprint, lm_eval_files)
    _OPENED[(options, device_index)] = ctx
    return ctx


def check_prompt(options: RunOptions) -> None:
    """--prompt names a packaged prompt or a readable, well-formed prompt file (checked where the run is opened, not
    in RunOptions: a stored run is judged again where its prompt file may not be)."""
    if options.prompt is None:
        return
    from qcheck.measure.generation import FewShotPrompt

    try:
        FewShotPrompt.load(options.prompt)
    except ConfigError as exc:
        raise ConfigError(f"--prompt {options.prompt}: {exc}", field="--prompt") from None


def check_chat_template(options: RunOptions, tokenizer: Any, source: str) -> None:
    """--chat-template on needs a tokenizer that has one (refused before anything runs, not per generation step)."""
    from qcheck.measure.generation import has_chat_template

    if options.chat_template == "on" and not has_chat_template(tokenizer):
        raise ConfigError(f"--chat-template on: the tokenizer of {source} has no chat template; pass "
                          "--chat-template off (plain Question/Answer prompts) or auto", field="--chat-template")


def check_context(options: RunOptions, config: Any, source: str) -> None:
    """--context within the positions the model was trained on: past them a learned position table has no row (an
    IndexError inside torch in every perplexity and fidelity step) and rotary positions extrapolate, so the
    perplexity would measure that, not the quantization."""
    from qcheck.inputs.models import trained_context

    limit = trained_context(config)
    if limit is not None and options.context > limit:
        raise ConfigError(f"--context {options.context} is longer than the {limit} positions {source} takes "
                          f"(its config's max_position_embeddings, with any rotary scaling); pass --context {limit} "
                          "or less", field="--context")


_OFFLOAD_DIRS: list[Any] = []
"""Temporary offload folders of dispatched references (removed when the process ends)."""


def offload_dir(options: RunOptions, role: str) -> str:
    """A fresh folder for one model's disk-offloaded weights: under --offload-folder when given, else temporary."""
    import tempfile

    root = options.offload_folder
    if root is not None:
        from pathlib import Path

        Path(root).mkdir(parents=True, exist_ok=True)
    folder = tempfile.TemporaryDirectory(prefix=f"qcheck-offload-{role}-", dir=root)
    _OFFLOAD_DIRS.append(folder)
    return folder.name


def with_default_budget(placement: Any, device: Any) -> Any:
    """Without --max-memory, each model may take half of every device's free memory (the reference and one variant
    are alive at once, each with the reference's placement); a CPU run places on the host only."""
    from dataclasses import replace

    if placement.max_memory:
        return placement
    from accelerate.utils import get_max_memory

    free = get_max_memory()
    budget = tuple((str(d), int(b) // 2) for d, b in free.items()
                   if d == "cpu" or (device.type == "cuda" and isinstance(d, int)))
    return replace(placement, max_memory=budget)


def _reloader(options: RunOptions, reference: Any) -> Any:
    """Fresh copies of a dispatched reference with its placement, each with its own offload folder (removed when
    the variant is released)."""
    import tempfile

    from qcheck.inputs.models import load_like

    def reload() -> Any:
        folder = tempfile.TemporaryDirectory(prefix="qcheck-offload-variant-", dir=options.offload_folder)
        model = load_like(options.model, reference, folder.name)
        model._qcheck_offload_dir = folder
        return model
    return reload


def precision_facts(options: RunOptions, dtype: str, device: Any = None) -> dict[str, Any]:
    """What the report states about precision: the reference's dtype, the arithmetic of simulated formats, how
    16-bit products ran on a CPU, and which attention kernels ran on a GPU."""
    from qcheck.measure.attention import STATEMENT

    on_cpu = device is not None and getattr(device, "type", str(device)) == "cpu"
    on_gpu = device is not None and getattr(device, "type", str(device)) == "cuda"
    half = None
    if on_cpu:
        half = ("fp16/bf16 matrix products ran as fp32 GEMMs of the 16-bit values, rounded once to 16 bits (fp32 "
                "accumulation, as in torch's own half GEMMs; --cpu-half-matmul fast), except in timings"
                if options.cpu_half_matmul == "fast" else
                "fp16/bf16 matrix products ran in torch's own CPU kernels (--cpu-half-matmul native)")
    return {"reference_dtype": dtype, "requested": options.reference_dtype, "half_matmul": half,
            "attention": STATEMENT if on_gpu else None,
            "fake_quant": ("simulated formats round each weight in fp32 and store it in fp32; the model computes in "
                           f"{dtype} (the reference's dtype) unless the plan casts it (fp16/bf16 plans)"
                           + ("" if dtype == "fp32" else f", and each quantized layer computes in fp32 between casts "
                              f"of its input and output (a grid value stored in {dtype} would leave its grid)")),
            "note": None if dtype == "fp32" else (
                f"the reference is {dtype}, not fp32: the variant named fp32 in this report is that {dtype} "
                f"reference, and perplexity changes are measured against it"
                + (f"; the default variant {dtype} is left out (it would be the reference itself)"
                   if options.variants is None and dtype in DEFAULT_VARIANTS else "")
                + "; the checks that need an fp32 model (the latency order of fp16/bf16/autocast against fp32) "
                  "are skipped, a simulated variant's slowdown is not bounded (its quantized layers compute in "
                  "fp32), and a 16-bit cast is judged by the KL bound of the coarser of its dtype and the "
                  "reference's")}


def check_memory(options: RunOptions, device: Any, reference_dtype: str = "fp32") -> None:
    """Refuse, before the reference is loaded, a run whose memory lower bound exceeds the device's free memory
    (`qcheck.inputs.fit`): a 70B model on a 24 GB machine is bad input with the figures, not an OOM kill. With
    --device-map and --max-memory each model takes at most its budget on a device (the rest is offloaded); without
    a budget accelerate places within half the free memory, so there is nothing to pre-check."""
    from qcheck.inputs.fit import available_bytes, check_fits, memory_need, meta_model, stored_bytes
    from qcheck.inputs.models import config_folder
    from qcheck.quant.plan import Plan
    from qcheck.variants import builtin_plan

    meta = meta_model(config_folder(options.model))
    if meta is None:
        return
    model, vocab = meta
    count = sum(p.numel() for p in model.parameters())
    dtypes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    not_counted = [f"PTQ variant {spec}" for spec in options.ptq]
    plans = [builtin_plan(n) for n in builtin_names(options, reference_dtype)]
    for source in options.plans:
        try:
            plans.append(Plan.load(source))
        except (QCheckError, OSError):
            continue  # the plan's own error is reported with its file when the variants are built
    for plan in plans:
        if plan.uses_bitsandbytes:
            not_counted.append(f"{plan.name} (bitsandbytes storage)")
        else:
            dtypes[plan.name] = plan.dtype
            size = stored_bytes(model, plan, reference_dtype)
            if size is not None:
                sizes[plan.name] = size
    batch = 8 if device.type == "cuda" else 1
    placement = options.placement()
    budget = None
    if placement is not None and placement.spreads:
        if not placement.max_memory:
            return
        budgets = placement.max_memory_dict()
        key = (device.index or 0) if device.type == "cuda" and (device.index or 0) in budgets else device.type
        if key not in budgets:
            return
        budget = budgets[key]
    check_fits(memory_need(count, dtypes, not_counted=tuple(not_counted), vocab_size=vocab, context=options.context,
                           batch=batch, device=device, available=available_bytes(device),
                           reference_dtype=reference_dtype, budget=budget, copies=sharing_workers(options, device),
                           variant_bytes=sizes))


def sharing_workers(options: RunOptions, device: Any) -> int:
    """How many worker processes share one device (`measure_parallel`): on a GPU run the workers over the GPUs,
    rounded up; on a CPU run all of them; 1 without workers."""
    workers = worker_count(options)
    if workers <= 1:
        return 1
    gpus = 0
    if device.type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    return per_device(workers, gpus)


def per_device(workers: int, gpus: int) -> int:
    """Workers on the busiest device when `workers` are dealt over `gpus` GPUs (0: a CPU run, all on the host)."""
    return -(-workers // gpus) if gpus else workers


def check_reference_finite(model: Any) -> None:
    """A reference whose own weights hold NaN/inf cannot judge any variant: bad input, naming the tensors."""
    import torch

    from qcheck.quant.offload import is_dispatched, named_tensors

    bad = []
    for name, p in (named_tensors(model) if is_dispatched(model) else model.named_parameters()):
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            bad.append(f"{name} ({int((~torch.isfinite(p)).sum())} of {p.numel()} values)")
    if bad:
        raise QCheckError(f"the reference model's own weights hold NaN/inf: {', '.join(bad[:5])}"
                          f"{f' (+{len(bad) - 5} more)' if len(bad) > 5 else ''}. The checkpoint is broken; every "
                          "variant is judged against the reference, so nothing is measured")


def measure_run(ctx: RunContext, needs: Needs, progress: Any = None, *, reference: bool = True) -> RecordStore:
    """Take every needed measurement: the reference's first, then each variant's between its build and release.
    With reference=False the reference is loaded (variants compare with it) but its own records are left to
    another worker."""
    from qcheck.measure.steps import ORDER, STEPS

    wanted = {v: {m for m in ms} for v, ms in needs.items()}
    order = ([REFERENCE] if reference else []) + [n for n in ctx.variants.names if n in wanted]
    ctx.store.meta.setdefault("data", {})
    for name in order:
        measurements = [m for m in ORDER if m in wanted.get(name, set())]
        if any(not STEPS[m].model_free for m in measurements):
            measurements = ["build", *[m for m in measurements if m != "build"]]
        if name == REFERENCE and not wanted.get(REFERENCE):
            measurements = ["build"]
        _measure_subject(ctx, name, measurements, progress)
        ctx.store.meta["peak_memory"] = peak_memory(ctx.device)  # after each subject: an interrupted run keeps it
    ctx.store.meta["data"].update(_data_descriptions(ctx))
    ctx.store.meta["peak_memory"] = peak_memory(ctx.device)
    return ctx.store


def peak_memory(device: Any) -> dict[str, Any]:
    """The process's peak resident memory and, on a GPU, the allocator's peak, in MiB (what a run cost)."""
    import resource
    import sys

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {"rss_max_mb": round(rss_kb / (1024 if sys.platform != "darwin" else 2**20), 1)}
    if device.type == "cuda":
        from qcheck.measure.gpu_peak import run_peak

        allocated, reserved = run_peak(device)
        out["gpu_max_allocated_mb"] = round(allocated / 2**20, 1)
        out["gpu_max_reserved_mb"] = round(reserved / 2**20, 1)
    return out


def _measure_subject(ctx: RunContext, name: str, measurements: list[str], progress: Any) -> None:
    from qcheck.measure.steps import STEPS, Subject

    todo = [m for m in measurements if (name, m) not in ctx.store]
    if not todo:
        return
    skipped = {m: reason for m in todo if (reason := _not_measured(ctx, m, name))}
    for m, reason in skipped.items():
        ctx.store.put(Record(name, m, RecordStatus.SKIPPED, reason=reason))
    todo = [m for m in todo if m not in skipped]
    if not todo:
        return
    if name == REFERENCE:
        subject = Subject(name, ctx.reference_model)
        for m in todo:
            _run_step(ctx, STEPS[m], subject, progress)
        return
    if all(STEPS[m].model_free for m in todo):
        for m in todo:
            _run_step(ctx, STEPS[m], Subject(name, None, None), progress)
        return
    start = time.perf_counter()
    try:
        built = ctx.variants.built(name)
        with _step_peak(ctx, name, "build"):
            variant = built.__enter__()
    except (KeyboardInterrupt, SystemExit):
        _note_cut(ctx, name, "build", start)
        raise
    except Exception as exc:  # noqa: BLE001 - a variant that cannot be built is an ERROR for each of its checks
        from qcheck.errors import VariantUnavailable

        status = RecordStatus.SKIPPED if isinstance(exc, VariantUnavailable) else RecordStatus.ERROR
        for m in todo:
            ctx.store.put(Record(name, m, status, reason=f"building {name} failed: {type(exc).__name__}: {exc}"
                                 if status == RecordStatus.ERROR else str(exc),
                                 data={"traceback": traceback.format_exc(limit=8)} if status == RecordStatus.ERROR
                                 else {}))
        return
    try:
        subject = Subject(name, variant.model, variant)
        for m in todo:
            if not STEPS[m].after_release:
                _run_step(ctx, STEPS[m], subject, progress)
    finally:
        # the subject holds the model and its decoder states: dropped before the release collects garbage, else a
        # dispatched model (its hooks make reference cycles) outlived its release until a later collection: the
        # 70B slice's w4g64 stayed on GPU 0 (20 GB) through int8's steps (RESULTS.md, session 28)
        subject = Subject(name, None, None)
        del variant
        built.__exit__(None, None, None)
    for m in todo:
        if STEPS[m].after_release:
            _run_step(ctx, STEPS[m], Subject(name, None, None), progress)
    ctx.store.meta.setdefault("variant_seconds", {})[name] = round(time.perf_counter() - start, 2)


def _run_step(ctx: RunContext, step: Any, subject: Any, progress: Any) -> None:
    from qcheck.measure.steps import NotApplicable

    if progress is not None:
        progress(subject.name, step.name)
    start = time.perf_counter()
    ctx.store.meta.pop("cut_in", None)  # a store measured on after a stop: that stop's step is behind it
    ctx.store.meta["in_flight"] = {}
    try:
        with _arithmetic(ctx, step, subject.model), _step_peak(ctx, subject.name, step.name):
            data, settings = step.run(ctx, subject)
    except (KeyboardInterrupt, SystemExit):
        _note_cut(ctx, subject.name, step.name, start)
        raise
    except NotApplicable as exc:
        ctx.store.put(Record(subject.name, step.name, RecordStatus.SKIPPED, reason=str(exc)))
        return
    except QCheckError as exc:
        ctx.store.put(Record(subject.name, step.name, RecordStatus.ERROR, reason=f"{type(exc).__name__}: {exc}",
                             data={"error_type": type(exc).__name__}, seconds=round(time.perf_counter() - start, 3)))
        return
    except Exception as exc:  # noqa: BLE001 - a failed measurement is an ERROR record, not a crashed run
        ctx.store.put(Record(subject.name, step.name, RecordStatus.ERROR, reason=f"{type(exc).__name__}: {exc}",
                             data={"error_type": type(exc).__name__, "traceback": traceback.format_exc(limit=12)},
                             seconds=round(time.perf_counter() - start, 3)))
        return
    finally:
        ctx.store.meta.pop("in_flight", None)
    ctx.store.put(Record(subject.name, step.name, RecordStatus.OK, data=data, settings=settings,
                         seconds=round(time.perf_counter() - start, 3)))


def _note_cut(ctx: RunContext, variant: str, measurement: str, start: float) -> None:
    """Record in the store's meta["cut_in"] the step a stop (Ctrl-C, or SIGTERM from a scheduler's time limit, which
    the plugin turns into KeyboardInterrupt) cut: which, after how long, and what it had noted (`note_in_flight`).
    Session 27's 70B slice was cut in an attack that left no trace of its batch."""
    ctx.store.meta["cut_in"] = {"variant": variant, "measurement": measurement,
                                "after_s": round(time.perf_counter() - start, 1),
                                **ctx.store.meta.pop("in_flight", {})}


@contextmanager
def _step_peak(ctx: RunContext, name: str, step: str) -> Iterator[None]:
    """On a GPU, the allocator's peak during one step (the reference and variant included), kept in the store's
    meta["step_peak_mb"] as "variant:step": which step set the run's peak memory, and by how much."""
    if not ctx.gpu:
        yield
        return
    import torch

    from qcheck.measure.gpu_peak import reset_step_peak

    reset_step_peak(ctx.device)
    try:
        yield
    finally:
        peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20
        ctx.store.meta.setdefault("step_peak_mb", {})[f"{name}:{step}"] = round(peak, 1)


def _arithmetic(ctx: RunContext, step: Any, model: Any) -> Any:
    """The context a step computes in: on a GPU, attention without cuDNN's per-shape plans (`qcheck.measure.
    attention`) except in timings; on a CPU, a model with 16-bit weights has its 16-bit products run as fp32
    GEMMs (`qcheck.measure.half_cpu`), except in timings and with `--cpu-half-matmul native`; everything else (fp32
    models on a CPU, which would only pay the mode's per-op Python call) runs torch's own kernels."""
    from contextlib import nullcontext

    if step.timed or model is None:
        return nullcontext()
    if ctx.gpu:
        from qcheck.measure.attention import varying_shape_attention

        return varying_shape_attention()
    if ctx.options.cpu_half_matmul == "native":
        return nullcontext()
    from qcheck.measure.half_cpu import half_matmul, has_half_weights

    return half_matmul("fast") if has_half_weights(model) else nullcontext()


OFFLOAD_UNTIMED = ("latency", "latency_casts", "energy")
"""Measurements that time forwards: under CPU or disk offload they time weight transfers, so they are not taken."""


def _not_measured(ctx: RunContext, measurement: str, name: str) -> str | None:
    from qcheck.measure.budget import not_measured

    if name != REFERENCE and measurement in ("latency_casts", "energy", "perplexity_short"):
        return f"{measurement} is measured on the reference only"
    if name == REFERENCE and measurement in ("weights", "rtn_perplexity"):
        return f"{measurement} compares a variant with the reference"
    if measurement in OFFLOAD_UNTIMED and ctx.store.meta.get("placement", {}).get("offloaded"):
        return (f"{measurement} is not taken with layers offloaded to the CPU or disk (--device-map/--max-memory): "
                "every forward then streams the offloaded weights to the GPU, so a timing measures that transfer, "
                "not the variant's kernels; time the variants on a placement that holds the model on the GPUs")
    return not_measured(measurement, name, gpu=ctx.gpu, options=ctx.options, context=ctx.options.context)


def _data_descriptions(ctx: RunContext) -> dict[str, Any]:
    """The data slices the records were measured on (path, SHA-256, offset, size), for the report's meta."""
    out: dict[str, Any] = {}
    cache = ctx.inputs._cache
    if "text" in cache:
        out["perplexity_text"] = {**cache["text"].describe(), "context": ctx.options.context}
    for key, value in cache.items():
        if key.startswith("arc:"):
            out["arc_easy"] = {k: v for k, v in value.describe().items() if k != "ids"}
        elif key.startswith("gsm8k:"):
            out["gsm8k"] = {k: v for k, v in value.describe().items() if k != "ids"}
        elif key.startswith("robust:"):
            out["robustness_arc_easy"] = value[1]
    return out


def worker_count(options: RunOptions) -> int:
    """Worker processes for a run: --workers N, or with 0 one per visible GPU on a CUDA run (else 1)."""
    if options.workers:
        return options.workers
    import torch

    return max(1, torch.cuda.device_count()) if options.device != "cpu" and torch.cuda.is_available() else 1


def measure_parallel(ctx: RunContext, needs: Needs, workers: int) -> RecordStore:
    """Spread the variants over `workers` processes and merge what they record into the run's store. Each worker
    loads the reference and takes the next variant from one shared list, longest first (`longest_first`), until
    none is left; worker 0 also measures the reference's own records; on a GPU run worker i uses GPU i mod the GPUs
    there are. Where workers share a device (more workers than GPUs, or a CPU run), the timed measurements
    (latency, energy) are left out of their shares and taken here afterwards, variant by variant, with the device
    to this process alone: a timing taken beside another worker's kernels would time the contention. Any number
    of workers works; the records are those one process would take (timing aside)."""
    import multiprocessing
    import tempfile
    from pathlib import Path

    from qcheck.measure.steps import STEPS

    gpus = 0
    if ctx.gpu:
        import torch

        gpus = torch.cuda.device_count()
    share = per_device(workers, gpus)
    if gpus and share > 1:
        import sys

        print(f"qcheck: {workers} workers share {gpus} GPU{'s' * (gpus > 1)}; CUDA time-slices between processes, so "
              "this is rarely faster than one worker per GPU (on one H100, 3 workers: 116 s and 117 s against one "
              "process's 111 s and 94 s at the 135M and 1.2B shapes)", file=sys.stderr)
    timed: Needs = {}
    if share > 1:
        timed = {n: {m for m in ms if STEPS[m].timed} for n, ms in needs.items()}
        timed = {n: ms for n, ms in timed.items() if ms}
    untimed = {n: set(ms) - timed.get(n, set()) for n, ms in needs.items()}
    queue = longest_first(ctx, [n for n in ctx.variants.names if untimed.get(n)])
    spawn = multiprocessing.get_context("spawn")
    taken, done = spawn.Value("i", 0), spawn.Value("i", 0)
    reference = sorted(untimed.get(REFERENCE, ()))  # worker 0 records the reference's build even with none
    with _reference_on_host(ctx) as parked, tempfile.TemporaryDirectory(prefix="qcheck-workers-") as tmp:
        procs = []
        shares = {n: sorted(untimed[n]) for n in queue}
        for i in range(max(1, min(workers, len(queue)))):
            out = Path(tmp) / f"worker-{i}.json"
            proc = spawn.Process(target=_worker, args=(ctx.options.to_dict(), shares, queue, taken, done,
                                                       reference if i == 0 else None,
                                                       (i % gpus) if gpus else None, share, str(out), i))
            proc.start()
            procs.append((i, proc, out))
        ctx.store.meta["workers"] = len(procs)
        ctx.store.variants = [REFERENCE, *ctx.variants.names]
        try:
            _follow(procs, done, len(queue) + 1)
            for _, proc, _ in procs:
                proc.join()
        except BaseException:
            # Ctrl-C, or SIGTERM turned into KeyboardInterrupt by the plugin: stop the workers (a non-daemon worker
            # would keep the interrupted run alive until it finished its share)
            _stop_workers(procs)
            raise
        finally:
            _merge_workers(ctx, procs)  # what they finished, interrupted or not
        died = [f"worker {i} (exit {proc.exitcode})" for i, proc, _ in procs if proc.exitcode != 0]
        for name, ms in {REFERENCE: set(), **untimed}.items():
            for m in ms | ({"build"} if name == REFERENCE or any(not STEPS[x].model_free for x in ms) else set()):
                if (name, m) not in ctx.store:
                    ctx.store.put(Record(name, m, RecordStatus.ERROR, reason="no worker recorded it: " + (
                        f"{', '.join(died)} ended before finishing what it had taken" if died else
                        "no worker took it, and every worker exited 0")))
    ctx.store.meta["reference_parked_on_host"] = parked
    if timed:
        ctx.store.meta["timed_after_workers"] = {
            "measurements": sorted({m for ms in timed.values() for m in ms}),
            "why": f"{len(procs)} workers shared {'the CPU' if not gpus else f'{gpus} GPU' + 's' * (gpus > 1)}: each timing was taken "
                   "afterwards in the parent process, alone on the device"}
        from qcheck.progress import variant_progress

        with variant_progress([n for n in (REFERENCE, *ctx.variants.names) if n in timed]) as progress:
            measure_run(ctx, timed, progress=progress)
    return ctx.store


def _merge_workers(ctx: RunContext, procs: list[Any]) -> None:
    """Every worker's written store into the run's: its records, and its meta under `workers_*` keys. The steps
    stopped workers cut are under `workers_cut_in`, the first also as the run's `cut_in` (what the report names)."""
    import json

    for i, _, out in procs:
        if not out.is_file():
            continue  # a worker that died before its first variant; what it took is marked by the caller
        part_store = RecordStore.from_dict(json.loads(out.read_text(encoding="utf-8")), source=str(out))
        ctx.store.merge(part_store)
        for key, value in part_store.meta.items():
            if key in ("variant_seconds", "peak_memory", "measured", "cut_in"):
                ctx.store.meta.setdefault(f"workers_{key}", {})[str(i)] = value
            elif key == "data":
                ctx.store.meta.setdefault("data", {}).update(value)
    cuts = ctx.store.meta.get("workers_cut_in")
    if cuts:
        ctx.store.meta["cut_in"] = next(iter(cuts.values()))


STOP_GRACE_S = 10.0
"""How long stopped workers get to exit on SIGTERM before they are killed."""


def _stop_worker(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: stop as Ctrl-C does, so the step it cuts is noted (`_note_cut`). Later SIGTERMs
    are ignored while it writes its store: GNU `timeout` signals the whole process group, and the parent's own
    `_stop_workers` follows."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")


def _stop_workers(procs: list[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Terminate the workers still running, and kill any still alive after `grace_s`. Each writes its store
    atomically, so what a worker finished survives it."""
    for _, proc, _ in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for _, proc, _ in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()


def _follow(procs: list[Any], done: Any, total: int) -> None:
    """Wait for the workers with a live line: subjects measured of `total` (workers count them in `done`)."""
    from qcheck.progress import progress_bar

    with progress_bar(f"qcheck, {len(procs)} workers", total=total, unit="variant") as bar:
        while any(proc.is_alive() for _, proc, _ in procs):
            time.sleep(0.5)
            if done.value > bar.n:
                bar.update(done.value - bar.n)


def longest_first(ctx: RunContext, names: list[str]) -> list[str]:
    """The order workers take variants in: those likely to take longest first, so that none of them is started
    last while the other workers sit idle. PTQ backends calibrate when built, and bitsandbytes' kernels are
    host-bound (its LLM.int8 generation was 20-50 s of a GPU run where a fake-quantized variant's took 2-12 s,
    RESULTS.md sessions 14-16); the rest keep the run's order."""
    def rank(name: str) -> int:
        plan = ctx.variants.plans.get(name)
        return 0 if plan is None else 1 if plan.uses_bitsandbytes else 2

    return sorted(names, key=rank)


@contextmanager
def _reference_on_host(ctx: RunContext) -> Iterator[bool]:
    """On a GPU run, this process's reference waits on the host while workers measure (worker 0 shares GPU 0 with
    it, and would hold its own reference and a variant beside it; its memory pre-check counts it too). Yields
    whether it moved: not on a CPU run, nor for a model accelerate dispatched."""
    from qcheck.quant.offload import is_dispatched

    model = ctx.loaded.model
    if not ctx.gpu or is_dispatched(model):
        yield False
        return
    import torch

    model.to("cpu")
    torch.cuda.empty_cache()
    try:
        yield True
    finally:
        model.to(ctx.device)


def _worker(options: dict[str, Any], shares: dict[str, list[str]], queue: list[str], taken: Any, done: Any,
            reference: list[str] | None, device_index: int | None, share: int, out: str, worker: int = 0) -> None:
    """One worker process: open the run on its device, measure the reference's records when given them, then take
    the next variant of `queue` (`taken` counts those handed out, `done` those measured, both shared by every
    worker) until none is left. `share` workers share its device: on a GPU its batches are sized within 1/`share`
    of it, on a CPU it computes with 1/`share` of torch's threads (one each would oversubscribe the cores). Its
    store is written as JSON after each subject (a worker that dies keeps what it finished); stopped (SIGTERM from
    the parent or a scheduler, Ctrl-C), it writes it once more with the step it cut (loading, if it was still
    loading the model), and exits 130."""
    import json
    import os
    import signal
    from pathlib import Path

    from qcheck.inputs.fit import share_device

    if device_index is None:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // share))
    else:
        share_device(share)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["QCHECK_PROGRESS"] = "0"
    signal.signal(signal.SIGTERM, _stop_worker)
    kw = dict(options)
    for key in ("plans", "ptq", "lm_eval_results"):
        kw[key] = tuple(kw.get(key) or ())
    if kw.get("variants") is not None:
        kw["variants"] = tuple(kw["variants"])
    kw["workers"] = 1
    target = Path(out)

    def write(store: RecordStore) -> None:
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(store.to_dict(), allow_nan=False), encoding="utf-8")
        os.replace(partial, target)

    start = time.perf_counter()
    try:
        ctx = open_run(RunOptions(**kw), device_index=device_index)
    except KeyboardInterrupt:  # stopped while loading (minutes at 70B): a store of no records that names the cut
        for stop in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop, signal.SIG_IGN)
        write(RecordStore(meta={"cut_in": {"variant": REFERENCE, "measurement": "load",
                                           "after_s": round(time.perf_counter() - start, 1), "worker": worker}}))
        raise SystemExit(130) from None

    def save(subject: str | None) -> None:
        if subject is not None:
            measured.append(subject)
        ctx.store.meta["measured"] = measured
        write(ctx.store)
        if subject is not None:
            with done.get_lock():
                done.value += 1

    measured: list[str] = []
    try:
        if reference is not None:
            measure_run(ctx, {REFERENCE: set(reference)}, reference=True)
            save(REFERENCE)
        while True:
            with taken.get_lock():
                index = taken.value
                taken.value += 1
            if index >= len(queue):
                break
            name = queue[index]
            measure_run(ctx, {name: set(shares[name])}, reference=False)
            save(name)
    except KeyboardInterrupt:
        for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches every worker, then the parent's SIGTERM
            signal.signal(stop, signal.SIG_IGN)
        ctx.store.meta.get("cut_in", {}).update(worker=worker)
        save(None)  # what it finished, and the step the stop cut (`_note_cut`)
        raise SystemExit(130) from None
    if not measured:
        save(None)  # a worker that found nothing left still writes its (empty) store
