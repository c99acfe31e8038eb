"""qcheck's pytest plugin (entry point pytest11): options, markers, the record store fixture and the report hook.

Thin and out of the way: installed in any project it imports nothing heavy (no torch, hypothesis or report
machinery) and sets nothing until a `--qcheck-*` option or a `qcheck_*` fixture is used. The suite's tests are
marked with the measurements they read (`@pytest.mark.qcheck_needs(...)`); after collection and `-k`/`-m`
selection the plugin knows what to measure, the `qcheck_store` fixture measures it once, variant by variant
(`qcheck.engine`), and the tests judge the records. With `--qcheck-records REPORT.json` the store is read from a
stored run instead: the same tests judge it again without a model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from qcheck import timeline
from qcheck.benchmark_integration import pytest_benchmark_update_machine_info, qcheck_benchmark  # noqa: F401

_REPORT = pytest.StashKey[Any]()
_NEEDS = pytest.StashKey[dict]()
_LOADED = pytest.StashKey[Any]()
_CONTEXT = pytest.StashKey[Any]()
_RECORDED = pytest.StashKey[bool]()
_PATHS = pytest.StashKey[list]()
_OLD_SIGTERM = pytest.StashKey[Any]()
_OURS = ("ci", "thorough")
_BENCH_DIR = pytest.StashKey[Any]()
_WRITE_S = pytest.StashKey[float]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from qcheck.options import add_arguments

    group = parser.getgroup("qcheck", "qcheck: quantization sanity invariants")
    add_arguments(group, pytest=True)
    group.addoption("--qcheck-report", dest="qcheck_report_dir", default=None, metavar="DIR",
                    help="write qcheck-report.json/.md/.html (and JUnit XML) to DIR")
    group.addoption("--qcheck-records", dest="qcheck_records", default=None, metavar="REPORT.json",
                    help="judge the records of a stored run (a qcheck-report.json) again, without a model")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped with a reason where there is none)")
    config.addinivalue_line("markers", "slow: long-running; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "qcheck_needs(*measurements, variants=None): the run measurements a qcheck "
                                       "check reads (for its qcheck_variant, or the variants `variants` names)")
    config.addinivalue_line("markers", "qcheck_check(name, param=None, variant=None): the check a suite test records "
                                       "(its name, and the parameter or fixed name its variant comes from), so a "
                                       "test skipped before judging reports the id a judged run gives it")
    _note_benchmark_dir(config)
    if (config.getoption("hypothesis_profile", None) or "") in _OURS:
        from qcheck.strategies import register_profiles

        register_profiles()
    if not _active(config):
        return
    from qcheck.errors import QCheckError
    from qcheck.options import from_pytest_config, in_pytest_words

    try:
        options = from_pytest_config(config)
    except QCheckError as exc:
        raise pytest.UsageError(in_pytest_words(str(exc))) from None
    if options.device == "cuda" and not options.records:
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--qcheck-device cuda was asked for, but no CUDA device is available")
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: timings would time the other workers' work
        from qcheck.measure.budget import share_with_xdist

        share_with_xdist(int(config.workerinput.get("workercount", 1)))
    if options.records:
        config.stash[_LOADED] = _load_records(options.records)
    else:
        _check_ptq_specs(options.ptq)
        from qcheck.engine import builtin_names

        try:
            builtin_names(options)  # a --variants naming the reference's own dtype: a usage error, not 7 collections
        except QCheckError as exc:
            raise pytest.UsageError(in_pytest_words(str(exc))) from None
    if options.report_dir:
        report_of(config)
        _terminate_as_interrupt(config)


def _active(config: pytest.Config) -> bool:
    """Whether this pytest run uses qcheck: any --qcheck-* option differs from its default."""
    from qcheck.options import OPTIONS

    for opt in OPTIONS:
        if config.getoption(f"qcheck_{opt.field}", None) not in (opt.kwargs.get("default"), None, []):
            return True
    return bool(config.getoption("qcheck_report_dir", None) or config.getoption("qcheck_records", None))


def _check_ptq_specs(specs: tuple[str, ...]) -> None:
    """A malformed --qcheck-ptq / $QCHECK_PTQ spec is a usage error before anything runs."""
    if not specs:
        return
    from qcheck.errors import QCheckError
    from qcheck.quant.backends import backend_from_spec

    for spec in specs:
        try:
            backend_from_spec(spec)
        except QCheckError as exc:
            raise pytest.UsageError(f"PTQ spec {spec!r} (--qcheck-ptq or $QCHECK_PTQ): {exc}") from None


def _note_benchmark_dir(config: pytest.Config) -> None:
    """pytest-benchmark (a qcheck dependency) creates ./.benchmarks at every session, even when nothing is benchmarked;
    remember whether it existed, so an empty one this session made can be removed at the end."""
    if config.pluginmanager.hasplugin("pytest_benchmark") or config.pluginmanager.hasplugin("benchmark"):
        from pathlib import Path

        storage = str(config.getoption("benchmark_storage", "") or "")
        if storage.startswith("file://") or "://" not in storage:
            path = Path(storage.removeprefix("file://") or ".benchmarks").resolve()
            config.stash[_BENCH_DIR] = (path, path.exists())


def _drop_empty_benchmark_dir(config: pytest.Config) -> None:
    path, existed = config.stash.get(_BENCH_DIR, (None, True))
    if path is not None and not existed and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _load_records(path: str) -> Any:
    from qcheck.errors import QCheckError
    from qcheck.records import RecordStore
    from qcheck.report import load_report

    try:
        data = load_report(path)
        return RecordStore.from_dict(data.get("records"), source=path)
    except QCheckError as exc:
        raise pytest.UsageError(f"--qcheck-records {path}: {exc}") from None


def report_of(config: pytest.Config) -> Any:
    """The run's RunReport (created on first use)."""
    if _REPORT not in config.stash:
        from qcheck.report import RunReport

        config.stash[_REPORT] = RunReport()
    return config.stash[_REPORT]


REPEATED_SIGTERM_S = 2.0
"""A SIGTERM this soon after the first is the same termination delivered twice, and is ignored: GNU `timeout`
signals the command and then its whole process group, which holds the command, so each of its timeouts arrives
twice (a handler that let the second one kill lost every report to `timeout`). A later one kills as usual."""


def _terminate_as_interrupt(config: pytest.Config) -> None:
    """Turn SIGTERM (CI timeouts, `timeout`, job cancellation) into a KeyboardInterrupt, so that pytest finishes
    the session and the report is still written, marked unfinished with the tests that did not run."""
    import signal
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return  # someone else handles SIGTERM; leave it to them
    first: list[float] = []

    def interrupt(signum: int, frame: Any) -> None:
        if first and time.monotonic() - first[0] < REPEATED_SIGTERM_S:
            return
        if first:  # a second termination: kill as usual
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
            return
        first.append(time.monotonic())
        raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    config.stash[_OLD_SIGTERM] = previous


def pytest_unconfigure(config: pytest.Config) -> None:
    _drop_empty_benchmark_dir(config)
    if hasattr(config, "workerinput"):
        from qcheck.measure.budget import share_with_xdist

        share_with_xdist(1)
    timeline.reset()  # this session's marks are in its report; a later in-process session starts afresh
    if _OLD_SIGTERM in config.stash:
        import signal

        signal.signal(signal.SIGTERM, config.stash[_OLD_SIGTERM])


# ------------------------------------------------------------------------------------------------- collection

def run_options(config: pytest.Config) -> Any:
    """The RunOptions of this run (of the stored run, with --qcheck-records)."""
    from qcheck.options import RunOptions, from_pytest_config

    if _LOADED in config.stash:
        stored = dict(config.stash[_LOADED].meta.get("options") or {})
        for key in ("plans", "ptq", "lm_eval_results"):
            stored[key] = tuple(stored.get(key) or ())
        if stored.get("variants") is not None:
            stored["variants"] = tuple(stored["variants"])
        return RunOptions(**{k: v for k, v in stored.items() if k in RunOptions.__dataclass_fields__})
    return from_pytest_config(config)


def variant_names(config: pytest.Config) -> list[str]:
    """The variants this run compares (the reference excluded), for parametrizing suite tests."""
    from qcheck.variants import REFERENCE

    if _LOADED in config.stash:
        return [v for v in config.stash[_LOADED].variants if v != REFERENCE]
    from qcheck.engine import variant_names as names

    return names(run_options(config))


def ptq_variant_names(config: pytest.Config) -> list[str]:
    """The names the run's PTQ backend variants run under."""
    if _LOADED in config.stash:
        store = config.stash[_LOADED]
        return [v for v in store.variants if store.has(v, "build") and store.data(v, "build").get("is_ptq")]
    from qcheck.errors import ConfigError
    from qcheck.quant.backends import ptq_variant_name

    out = []
    for spec in run_options(config).ptq:
        try:
            out.append(ptq_variant_name(spec))
        except ConfigError:
            out.append(spec)
    return out


def run_on_gpu(config: pytest.Config) -> bool:
    """Whether the run measures (or measured) on a CUDA device."""
    if _LOADED in config.stash:
        return str(config.stash[_LOADED].meta.get("device", "")).startswith("cuda")
    device = run_options(config).device
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device == "cuda"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qcheck_variant" in metafunc.fixturenames:
        metafunc.parametrize("qcheck_variant", variant_names(metafunc.config))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip gpu tests without CUDA, then gather what the selected qcheck checks need measured (after -k/-m)."""
    if any(item.get_closest_marker("gpu") for item in items):
        reason = None
        if _LOADED in config.stash:
            # judging stored records: what counts is the machine that measured them, not this one
            if not run_on_gpu(config):
                reason = "gpu test: no CUDA device on the machine that measured this run (its records are CPU's)"
        else:
            import torch

            if not torch.cuda.is_available():
                reason = "gpu test: no CUDA device on this machine (torch.cuda.is_available() is False)"
        if reason:
            skip = pytest.mark.skip(reason=reason)
            for item in items:
                if item.get_closest_marker("gpu"):
                    item.add_marker(skip)
    needs: dict[str, set[str]] = {}
    marked = [item for item in items if item.get_closest_marker("qcheck_needs")
              and not item.get_closest_marker("skip")]
    if marked:
        from qcheck.variants import REFERENCE

        names = variant_names(config)
        for item in marked:
            params = getattr(getattr(item, "callspec", None), "params", {})
            for mark in item.iter_markers("qcheck_needs"):
                chooser = mark.kwargs.get("variants")
                if chooser is not None:
                    targets = list(chooser(params, names))
                else:
                    targets = [params.get("qcheck_variant", REFERENCE)]
                for target in targets:
                    needs.setdefault(target, set()).update(mark.args)
    config.stash[_NEEDS] = needs


def pytest_collection_finish(session: pytest.Session) -> None:
    if _REPORT in session.config.stash:
        if "imported" not in timeline.marks():
            # a plain pytest run's timeline starts here; marks already set came from earlier work in this process
            # (a test that opened a run in-process), not from this run (`qcheck run` marks "imported" first)
            timeline.reset()
        timeline.mark("collected")


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def qcheck_options(pytestconfig: pytest.Config) -> Any:
    """The qcheck options of this run (a qcheck.options.RunOptions)."""
    return run_options(pytestconfig)


@pytest.fixture(scope="session")
def qcheck_report(pytestconfig: pytest.Config) -> Any:
    """The run's RunReport: add metrics with `.add_metric(variant, key, value)`."""
    return report_of(pytestconfig)


def _context(config: pytest.Config) -> Any:
    """The run context (reference loaded, variants validated), opened on first use."""
    if _CONTEXT not in config.stash:
        if _LOADED in config.stash:
            raise pytest.UsageError("this run judges stored records (--qcheck-records): it has no model to use")
        from qcheck.engine import open_run
        from qcheck.errors import QCheckError
        from qcheck.options import in_pytest_words

        try:
            config.stash[_CONTEXT] = open_run(run_options(config))
        except QCheckError as exc:  # bad input found loading the model: a usage error, as `qcheck run` exits 2 on it
            pytest.exit(f"qcheck: {in_pytest_words(str(exc))}", returncode=pytest.ExitCode.USAGE_ERROR)
        timeline.mark("opened")
    return config.stash[_CONTEXT]


@pytest.fixture(scope="session")
def qcheck_store(pytestconfig: pytest.Config) -> Any:
    """The run's RecordStore: every measurement the selected checks need, taken once, variant by variant (or read
    from --qcheck-records)."""
    report = report_of(pytestconfig)
    if _LOADED in pytestconfig.stash:
        store = pytestconfig.stash[_LOADED]
    else:
        from qcheck.engine import measure_parallel, measure_run, worker_count
        from qcheck.progress import variant_progress

        ctx = _context(pytestconfig)
        ctx.store.meta["selection"] = {"keyword": pytestconfig.getoption("keyword", "") or None,
                                       "markexpr": pytestconfig.getoption("markexpr", "") or None}
        report.records = ctx.store  # filled as it goes: an interrupted run still reports what it measured
        needs = pytestconfig.stash.get(_NEEDS, {})
        workers = worker_count(ctx.options)
        if workers > 1:
            store = measure_parallel(ctx, needs, workers)
        else:
            with variant_progress(ctx.store.variants) as progress:
                store = measure_run(ctx, needs, progress=progress)
        timeline.mark("measured")
    report.records = store
    return store


class Records:
    """The store as a check reads it: `.data(variant, measurement)` skips the test with the reason when the
    measurement was not taken, and raises MeasurementError (reported as ERROR) when it failed."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def data(self, variant: str, measurement: str) -> dict[str, Any]:
        from qcheck.records import MeasurementSkipped

        try:
            return self.store.data(variant, measurement)
        except MeasurementSkipped as exc:
            pytest.skip(exc.reason)

    def has(self, variant: str, measurement: str) -> bool:
        return self.store.has(variant, measurement)

    def find(self, variant: str, measurement: str) -> Any:
        return self.store.find(variant, measurement)

    @property
    def variants(self) -> list[str]:
        return list(self.store.variants)

    @property
    def meta(self) -> dict[str, Any]:
        return self.store.meta

    @property
    def reference_dtype(self) -> str:
        """The dtype the reference computed in ("fp32" for runs whose records predate --reference-dtype)."""
        return (self.meta.get("precision") or {}).get("reference_dtype") or "fp32"


@pytest.fixture(scope="session")
def qcheck_records(qcheck_store: Any) -> Records:
    """The run's records, as the suite's checks read them (see Records)."""
    return Records(qcheck_store)


@pytest.fixture(scope="session")
def qcheck_device(pytestconfig: pytest.Config) -> Any:
    """The torch device of this run (auto: cuda when available)."""
    return _context(pytestconfig).device


@pytest.fixture(scope="session")
def qcheck_reference(pytestconfig: pytest.Config) -> Any:
    """The reference model and tokenizer: a qcheck.inputs.models.LoadedModel, shared by the session."""
    return _context(pytestconfig).loaded


@pytest.fixture(scope="session")
def qcheck_variants(pytestconfig: pytest.Config) -> Any:
    """A qcheck.variants.VariantSet: `.get(name)` builds a variant (keeping only the last one built)."""
    return _context(pytestconfig).variants


@pytest.fixture(scope="session")
def qcheck_eval_text(pytestconfig: pytest.Config) -> Any:
    """The evaluation token slice (`.ids`, `.text`, `.source`, `.sha256`)."""
    from qcheck.errors import DataError

    try:
        return _context(pytestconfig).inputs.eval_text()
    except DataError as exc:
        pytest.skip(f"no evaluation text: {exc}")


@pytest.fixture(scope="session")
def qcheck_probe_ids(pytestconfig: pytest.Config) -> Any:
    """Two rows of 32 real tokens from the evaluation text, for output comparisons."""
    return _context(pytestconfig).inputs.probe_ids()


@pytest.fixture(scope="session")
def qcheck_perplexity(pytestconfig: pytest.Config) -> Callable[[str], Any]:
    """`qcheck_perplexity(name)`: the variant's PerplexityResult on the evaluation slice (measured once)."""
    from qcheck.engine import measure_run
    from qcheck.measure.perplexity import PerplexityResult
    from qcheck.records import MeasurementError

    def get(name: str) -> Any:
        ctx = _context(pytestconfig)
        measure_run(ctx, {name: {"perplexity"}})
        record = ctx.store.find(name, "perplexity")
        if not record.ok:
            raise MeasurementError(record)
        return PerplexityResult.from_dict(record.data)

    return get


@pytest.fixture
def qcheck_record(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """`qcheck_record(result)`: add a CheckResult to the report; INCONCLUSIVE and SKIPPED results skip the test,
    naming why."""
    from qcheck.results import Status

    report = report_of(request.config)

    def record(result: Any) -> Any:
        request.node.stash[_RECORDED] = True
        report.add_check(result)
        if result.status in (Status.INCONCLUSIVE, Status.SKIPPED):
            pytest.skip(f"{result.status.value}: {result.message}")
        return result

    return record


# ------------------------------------------------------------------------------------------------- report hooks

def _check_id(item: pytest.Item) -> tuple[str, str | None]:
    """The (name, variant) a suite test's check is reported under: its `qcheck_check` marker's, else the test's name
    without `test_` and its qcheck_variant. A test skipped before it judges (a measurement not taken) then keeps the
    id a judged run gives it, so runs compare check by check."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    mark = item.get_closest_marker("qcheck_check")
    if mark is None:
        return item.name.split("[")[0].removeprefix("test_"), params.get("qcheck_variant")
    param = mark.kwargs.get("param", "qcheck_variant")
    variant = mark.kwargs["variant"] if "variant" in mark.kwargs else params.get(param)
    return mark.args[0], None if variant is None else str(variant)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    rep = yield
    if call.when not in ("setup", "call"):
        return rep
    from qcheck.errors import InvariantViolation

    excinfo = call.excinfo
    in_suite = "qcheck_record" in getattr(item, "fixturenames", ())
    violation = excinfo is not None and isinstance(excinfo.value, InvariantViolation)
    if not (in_suite or violation or _REPORT in item.config.stash):
        return rep
    from qcheck.records import MeasurementError
    from qcheck.results import CheckResult, Status

    report = report_of(item.config)
    name, variant = _check_id(item)
    if violation:
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
        if isinstance(excinfo.value, MeasurementError):
            record = excinfo.value.record
            message = f"the measurement this check reads failed: {record.measurement} of {record.variant}: " \
                      f"{record.reason}"
            evidence = {"test": item.nodeid, "record": record.to_dict()}
            report.add_check(CheckResult(name, Status.ERROR, message[:2000], variant=variant, evidence=evidence))
        else:
            status = Status.FAIL if isinstance(excinfo.value, AssertionError) else Status.ERROR
            report.add_check(CheckResult(name, status, f"{type(excinfo.value).__name__}: {excinfo.value}"[:2000],
                                         variant=variant, evidence={"test": item.nodeid, "phase": call.when}))
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    result = yield
    if _REPORT in item.config.stash:
        item.config.stash[_REPORT].note_finished(item.nodeid)
    return result


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist's controller, as a worker ends: merge the worker's share of the report (`worker_handoff`)."""
    from qcheck.report.worker_handoff import KEY, merge_worker_payload

    payload = (getattr(node, "workeroutput", None) or {}).get(KEY)
    if payload:
        merge_worker_payload(report_of(node.config), payload, str(node.gateway.id))
    if error:  # a worker that crashed: what it ran is missing, so the run is incomplete
        report_of(node.config).meta.setdefault("xdist_workers_lost", []).append(f"{node.gateway.id}: {error}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    out = config.getoption("qcheck_report_dir", None)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller writes the one report
        if out and _REPORT in config.stash:
            from qcheck.report.worker_handoff import KEY, worker_payload

            config.workeroutput[KEY] = worker_payload(config.stash[_REPORT])
        return
    if not out or int(exitstatus) in (4, 5):
        return  # a usage error or nothing selected: no report (an empty report would read as a pass)
    timeline.mark("judged")
    import time

    from qcheck.report import run_metadata, write_reports

    report = report_of(config)
    report.complete = exitstatus not in (2, 3) and not session.shouldstop
    reason = {2: "interrupted (Ctrl-C, SIGTERM, pytest.exit or collection errors)", 3: "pytest internal error"}.get(
        int(exitstatus)) or (str(session.shouldstop) if session.shouldstop else None)
    lost = report.meta.get("xdist_workers_lost")
    if lost:
        reason = "; ".join([*([reason] if reason else []), f"pytest-xdist worker(s) lost: {'; '.join(lost)}"])
    report.mark_unfinished([item.nodeid for item in session.items], reason, int(exitstatus))
    if _LOADED in config.stash:
        report.records = config.stash[_LOADED]
        report.meta["judged_from"] = config.getoption("qcheck_records")
    if report.records is not None:
        for key in ("model", "device", "placement", "precision", "data", "seeds", "options", "variant_seconds",
                    "workers", "timed_after_workers"):
            if key in report.records.meta:
                report.meta.setdefault(key, report.records.meta[key])
    # this run's marks; the records carry them too where this run measured them (a judged run's records keep the
    # timeline of the run that measured them)
    report.meta["timeline"] = timeline.marks()
    if report.records is not None and _LOADED not in config.stash:
        report.records.meta["timeline"] = report.meta["timeline"]
    report.meta = {**run_metadata(), **report.meta, "pytest_exit_status": int(exitstatus)}
    start = time.perf_counter()
    config.stash[_PATHS] = write_reports(report, out)
    config.stash[_WRITE_S] = time.perf_counter() - start  # after the reports: on the terminal line only


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    paths = config.stash.get(_PATHS, None)
    if paths:
        report = config.stash[_REPORT]
        terminalreporter.write_sep("-", f"qcheck: {report.status.value}; report written in "
                                        f"{config.stash.get(_WRITE_S, 0.0):.1f} s")
        for p in paths:
            terminalreporter.write_line(f"qcheck report: {p}")
