"""qcheck's pytest plugin: options, markers, session fixtures and the report hook (entry point pytest11).

Thin by design: heavy imports happen inside fixtures, and every number comes from qcheck's library.
Checks recorded through `qcheck_record` or raised as InvariantViolation end up in the run report.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qcheck.benchmark_integration import pytest_benchmark_update_machine_info, qcheck_benchmark  # noqa: F401

_REPORT_KEY = pytest.StashKey["Any"]()


@dataclass(frozen=True)
class RunOptions:
    """The qcheck options of this pytest run."""

    model: str | None = None
    plans: tuple[str, ...] = ()
    variants: tuple[str, ...] | None = None
    device: str = "auto"
    report_dir: str | None = None
    samples: int = 50
    prompts: int | None = None
    tokens: int = 4096
    context: int = 1024
    text: str | None = None
    optuna_objective: str | None = None
    optuna_storage: str | None = None
    optuna_study: str | None = None
    ptq: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qcheck", "qcheck: quantization sanity invariants")
    group.addoption("--qcheck-model", default=None, help="model: HF folder or .gguf file (default: embedded SmolLM2)")
    group.addoption("--qcheck-plan", action="append", default=[], help="plan TOML file to add as a variant (repeat)")
    group.addoption("--qcheck-variants", default=None,
                    help="comma-separated built-in variants to include (default: all); 'none' for only --qcheck-plan")
    group.addoption("--qcheck-device", default="auto", choices=("auto", "cpu", "cuda"), help="device (default auto)")
    group.addoption("--qcheck-report", default=None, metavar="DIR", help="write qcheck-report.json/.md/.html to DIR")
    group.addoption("--qcheck-samples", type=int, default=50, help="questions/prompts per task slice (default 50)")
    group.addoption("--qcheck-prompts", type=int, default=None,
                    help="generation prompts (GSM8K) per variant, when fewer than --qcheck-samples are wanted "
                         "(generation costs far more per sample than multiple-choice scoring)")
    group.addoption("--qcheck-tokens", type=int, default=4096, help="evaluation tokens for perplexity (default 4096)")
    group.addoption("--qcheck-context", type=int, default=1024, help="perplexity context length (default 1024)")
    group.addoption("--qcheck-text", default=None, help="evaluation text file (default: WikiText-2 test)")
    group.addoption("--qcheck-ptq", action="append", default=[], metavar="SPEC",
                    help="PTQ backend variant to add (repeat): bnb-config:nf4, torchao:int8-wo, gptq[:SOURCE], "
                         "checkpoint=FOLDER, ... (also $QCHECK_PTQ, comma-separated)")
    group.addoption("--qcheck-optuna-objective", default=None, help="MODULE:FUNCTION of an Optuna objective to audit")
    group.addoption("--qcheck-optuna-storage", default=None, help="Optuna storage URL of a study to audit")
    group.addoption("--qcheck-optuna-study", default=None, help="name of the stored Optuna study to audit")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped with a reason where there is none)")
    config.addinivalue_line("markers", "slow: long-running; deselect with -m 'not slow'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from qcheck.strategies import register_profiles
    except ImportError:
        pass
    else:
        register_profiles()
    if config.getoption("--qcheck-device", "auto") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--qcheck-device cuda was asked for, but no CUDA device is available")
    from qcheck.report import RunReport

    config.stash[_REPORT_KEY] = RunReport()
    if config.getoption("--qcheck-report", None):
        _terminate_as_interrupt(config)


_OLD_SIGTERM = pytest.StashKey[Any]()


def _terminate_as_interrupt(config: pytest.Config) -> None:
    """Turn SIGTERM (CI timeouts, `timeout`, job cancellation) into a KeyboardInterrupt, so that pytest finishes
    the session and the report is still written, marked unfinished with the tests that did not run."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return  # someone else handles SIGTERM; leave it to them

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills as usual
        raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    config.stash[_OLD_SIGTERM] = previous


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OLD_SIGTERM in config.stash:
        import signal

        signal.signal(signal.SIGTERM, config.stash[_OLD_SIGTERM])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device on this machine (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


def _options(config: pytest.Config) -> RunOptions:
    variants = config.getoption("--qcheck-variants")
    names: tuple[str, ...] | None = None
    if variants is not None:
        names = () if variants.strip() == "none" else tuple(v.strip() for v in variants.split(",") if v.strip())
    return RunOptions(
        model=config.getoption("--qcheck-model"), plans=tuple(config.getoption("--qcheck-plan")), variants=names,
        device=config.getoption("--qcheck-device"), report_dir=config.getoption("--qcheck-report"),
        samples=config.getoption("--qcheck-samples"), prompts=config.getoption("--qcheck-prompts"),
        tokens=config.getoption("--qcheck-tokens"),
        context=config.getoption("--qcheck-context"), text=config.getoption("--qcheck-text"),
        optuna_objective=config.getoption("--qcheck-optuna-objective"),
        optuna_storage=config.getoption("--qcheck-optuna-storage"),
        optuna_study=config.getoption("--qcheck-optuna-study"), ptq=_ptq_specs(config))


def _ptq_specs(config: pytest.Config) -> tuple[str, ...]:
    from qcheck.quant.backends import ptq_specs_from_env

    return tuple(dict.fromkeys([*config.getoption("--qcheck-ptq", []), *ptq_specs_from_env()]))


def variant_names(config: pytest.Config) -> list[str]:
    """The variants this run compares (built-in selection plus user plans), for parametrizing suite tests."""
    from qcheck.quant.plan import Plan
    from qcheck.variants import DEFAULT_VARIANTS

    opts = _options(config)
    names = list(DEFAULT_VARIANTS if opts.variants is None else opts.variants)
    for path in opts.plans:
        try:
            plan = Plan.load(path)
            names.append(plan.name if plan.name != "plan" else Path(path).stem)
        except Exception:  # reported properly when the variant set is built
            names.append(Path(path).stem)
    return names + ptq_variant_names(config)


def ptq_variant_names(config: pytest.Config) -> list[str]:
    """The names the run's PTQ backend variants (--qcheck-ptq / $QCHECK_PTQ) run under."""
    from qcheck.errors import ConfigError
    from qcheck.quant.backends import ptq_variant_name

    names = []
    for spec in _options(config).ptq:
        try:
            names.append(ptq_variant_name(spec))
        except ConfigError:  # reported properly when the variant set is built
            names.append(spec)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qcheck_variant" in metafunc.fixturenames:
        metafunc.parametrize("qcheck_variant", variant_names(metafunc.config))


@pytest.fixture(scope="session")
def qcheck_options(pytestconfig: pytest.Config) -> RunOptions:
    """The qcheck options of this run."""
    return _options(pytestconfig)


@pytest.fixture(scope="session")
def qcheck_report(pytestconfig: pytest.Config) -> Any:
    """The run's RunReport: add metrics with `.add_metric(variant, key, value)`."""
    return pytestconfig.stash[_REPORT_KEY]


@pytest.fixture(scope="session")
def qcheck_device(qcheck_options: RunOptions) -> Any:
    """The torch device of this run (auto: cuda when available)."""
    import torch

    if qcheck_options.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(qcheck_options.device)


@pytest.fixture(scope="session")
def qcheck_reference(qcheck_options: RunOptions, qcheck_device: Any, qcheck_report: Any) -> Any:
    """The reference model (fp32) and tokenizer: a qcheck.inputs.models.LoadedModel, shared by the session."""
    import torch

    from qcheck.inputs.models import load_model

    torch.manual_seed(0)
    loaded = load_model(qcheck_options.model, device=qcheck_device, cache=True)
    qcheck_report.meta["model"] = loaded.describe()
    qcheck_report.meta["device"] = str(qcheck_device)
    qcheck_report.meta["seeds"] = {"torch": 0, "probe_inputs": 0, "bootstrap": 0}
    return loaded


@pytest.fixture(scope="session")
def qcheck_variants(qcheck_reference: Any, qcheck_options: RunOptions, qcheck_report: Any, qcheck_device: Any,
                    pytestconfig: pytest.Config) -> Any:
    """A qcheck.variants.VariantSet: `.get(name)` quantizes the reference once per variant and records it."""
    from qcheck.variants import DEFAULT_VARIANTS, REFERENCE, VariantSet

    names = list(DEFAULT_VARIANTS if qcheck_options.variants is None else qcheck_options.variants)

    def record(variant: Any) -> None:
        v = qcheck_report.variant(variant.name)
        v.plan = variant.plan.to_dict() if variant.plan is not None else {
            "name": variant.name, "ptq": variant.spec, "backend": variant.report.backend, **variant.report.plan}
        v.manifest_summary = variant.report.summary()
        v.manifest = [{"name": r.name, "format": r.format, "bits": r.bits, "rule": r.rule, "applied": r.applied,
                       "kept_reason": r.kept_reason, "dtype": r.dtype, "module_class": r.module_class,
                       "rel_change": r.rel_change, "sqnr_db": r.sqnr_db, "saturation_rate": r.saturation_rate,
                       "underflow_rate": r.underflow_rate, "sparsity": r.sparsity} for r in variant.report.layers]
        v.metrics["quantize_seconds"] = round(variant.seconds, 3)

    from qcheck.errors import VariantUnavailable

    class SuiteVariants(VariantSet):
        """A variant this machine cannot build (a GPU-only backend on CPU) skips its tests, saying why."""

        def get(self, name: str) -> Any:
            try:
                return super().get(name)
            except VariantUnavailable as exc:
                pytest.skip(str(exc))

    variants = SuiteVariants.from_names(qcheck_reference.model, names, list(qcheck_options.plans),
                                        ptq_specs=list(qcheck_options.ptq), on_build=record,
                                        tokenizer=qcheck_reference.tokenizer, device=str(qcheck_device))
    variants.validate()
    qcheck_report.variant(REFERENCE).plan = {"name": REFERENCE, "dtype": "fp32"}
    return variants


@dataclass(frozen=True)
class EvalText:
    """The evaluation text slice with where it came from."""

    text: str
    source: str
    sha256: str
    max_tokens: int


@pytest.fixture(scope="session")
def qcheck_eval_text(qcheck_options: RunOptions, qcheck_report: Any) -> EvalText:
    """The perplexity text: --qcheck-text, else WikiText-2 test from ../shared/data (skips when absent)."""
    from qcheck.errors import DataError
    from qcheck.inputs.data import find_data_file, read_text, sha256_of

    try:
        path = Path(qcheck_options.text) if qcheck_options.text else find_data_file("wikitext-2-raw/wiki.test.raw")
        text = read_text(path, max_chars=qcheck_options.tokens * 12)
    except DataError as exc:
        pytest.skip(f"no evaluation text: {exc}")
    data = EvalText(text, str(path), sha256_of(path), qcheck_options.tokens)
    qcheck_report.meta.setdefault("data", {})["perplexity_text"] = {
        "path": data.source, "sha256": data.sha256, "max_tokens": data.max_tokens,
        "context": qcheck_options.context}
    return data


@pytest.fixture(scope="session")
def qcheck_probe_ids(qcheck_reference: Any, qcheck_eval_text: EvalText) -> Any:
    """Two rows of 32 real tokens from the evaluation text, for output comparisons."""
    import torch

    ids = qcheck_reference.tokenizer(qcheck_eval_text.text[:4000], add_special_tokens=False)["input_ids"][:64]
    return torch.tensor(ids, dtype=torch.long).reshape(2, 32)


def run_perplexity(model: Any, tokenizer: Any, text: str, options: RunOptions) -> Any:
    """Perplexity of `model` on `text` with the run's context and token budget (batches of 8 on a GPU)."""
    from qcheck.measure.perplexity import perplexity

    return perplexity(model, tokenizer, text, context=options.context, max_tokens=options.tokens,
                      batch_size=1 if next(model.parameters()).device.type == "cpu" else 8)


@pytest.fixture(scope="session")
def qcheck_perplexity(qcheck_reference: Any, qcheck_variants: Any, qcheck_eval_text: EvalText,
                      qcheck_options: RunOptions, qcheck_report: Any) -> Callable[[str], Any]:
    """`qcheck_perplexity(name)`: the variant's PerplexityResult on the evaluation text (computed once)."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            result = run_perplexity(qcheck_variants.model(name), qcheck_reference.tokenizer, qcheck_eval_text.text,
                                    qcheck_options)
            cache[name] = result
            qcheck_report.add_metric(name, "perplexity", result.to_dict(with_windows=True))
        return cache[name]

    return get


@pytest.fixture
def qcheck_record(request: pytest.FixtureRequest, qcheck_report: Any) -> Callable[[Any], Any]:
    """`qcheck_record(result)`: add a CheckResult to the report; INCONCLUSIVE results skip the test, naming why."""
    from qcheck.results import Status

    def record(result: Any) -> Any:
        request.node.stash[_RECORDED] = True
        qcheck_report.add_check(result)
        if result.status == Status.INCONCLUSIVE:
            pytest.skip(f"INCONCLUSIVE: {result.message}")
        return result

    return record


_RECORDED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if call.when not in ("setup", "call") or _REPORT_KEY not in item.config.stash:
        return rep
    from qcheck.errors import InvariantViolation
    from qcheck.results import CheckResult, Status

    report = item.config.stash[_REPORT_KEY]
    in_suite = "qcheck_record" in getattr(item, "fixturenames", ())
    excinfo = call.excinfo
    variant = getattr(item, "callspec", None) and item.callspec.params.get("qcheck_variant")
    name = item.name.split("[")[0].removeprefix("test_")
    if excinfo is not None and isinstance(excinfo.value, InvariantViolation):
        result = excinfo.value.result
        if result.variant is None and variant:
            result.variant = variant
        report.add_check(result)
    elif not in_suite:
        return rep
    elif rep.skipped and not item.stash.get(_RECORDED, False):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        report.add_check(CheckResult(name, Status.SKIPPED, reason.removeprefix("Skipped: "), variant=variant,
                                     evidence={"test": item.nodeid}))
    elif rep.failed and excinfo is not None:
        status = Status.FAIL if isinstance(excinfo.value, AssertionError) else Status.ERROR
        report.add_check(CheckResult(name, status, f"{type(excinfo.value).__name__}: {excinfo.value}"[:2000],
                                     variant=variant, evidence={"test": item.nodeid, "phase": call.when}))
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    result = yield
    if _REPORT_KEY in item.config.stash:
        item.config.stash[_REPORT_KEY].note_finished(item.nodeid)
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    out = config.getoption("--qcheck-report", None)
    if not out or _REPORT_KEY not in config.stash:
        return
    from qcheck.report import run_metadata, write_reports

    report = config.stash[_REPORT_KEY]
    report.complete = exitstatus not in (2, 3) and not session.shouldstop
    reason = {2: "interrupted (Ctrl-C, SIGTERM, pytest.exit or collection errors)", 3: "pytest internal error"}.get(
        int(exitstatus)) or (str(session.shouldstop) if session.shouldstop else None)
    report.mark_unfinished([item.nodeid for item in session.items], reason, int(exitstatus))
    report.meta = {**run_metadata(), **report.meta, "pytest_exit_status": int(exitstatus)}
    paths = write_reports(report, out)
    config.stash[_PATHS] = paths


_PATHS = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    paths = config.stash.get(_PATHS, None)
    if paths:
        report = config.stash[_REPORT_KEY]
        terminalreporter.write_sep("-", f"qcheck: {report.status.value}; report written")
        for p in paths:
            terminalreporter.write_line(f"qcheck report: {p}")

