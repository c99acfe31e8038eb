"""The measure-once engine: variant-major (one variant alive at a time), measurements chosen by the selected checks,
a failed measurement is an ERROR record (not a crashed run), and a stored run is judged again from its JSON alone."""
import gc
import importlib
import json
import shutil
import subprocess
import sys
import weakref

import pytest

from qcheck.engine import measure_run, open_run
from qcheck.options import RunOptions
from qcheck.records import RecordStatus


def _options(folder, **kw):
    base = {"model": str(folder), "variants": ("int8", "w4g64", "fixed8.4", "fixed16.8"), "device": "cpu",
            "tokens": 512, "context": 128}
    base.update(kw)
    return RunOptions(**base)


def test_variants_are_built_one_at_a_time_and_released(tiny_folder, monkeypatch):
    ctx = open_run(_options(tiny_folder, samples=2))
    alive: list[weakref.ref] = []
    seen_alive_at_build: list[int] = []
    original = ctx.variants.build

    def build(name):
        gc.collect()
        seen_alive_at_build.append(sum(ref() is not None for ref in alive))
        variant = original(name)
        alive.append(weakref.ref(variant.model))
        return variant

    monkeypatch.setattr(ctx.variants, "build", build)
    needs = {n: {"perplexity", "weights"} for n in ["fp32", *ctx.variants.names]}
    store = measure_run(ctx, needs)
    assert seen_alive_at_build == [0, 0, 0, 0]  # the previous variant was freed before the next was built
    gc.collect()
    assert all(ref() is None for ref in alive)
    for name in ctx.variants.names:
        assert store.has(name, "perplexity") and store.has(name, "weights") and store.has(name, "build")
    assert store.find("fp32", "weights").status == RecordStatus.SKIPPED  # compares a variant with the reference


@pytest.mark.parametrize("placed", [False, True], ids=["one-device", "dispatched"])
def test_a_variant_is_gone_when_its_release_returns(tiny_folder, tmp_path, monkeypatch, placed):
    # a dispatched model's hooks make reference cycles, so it is freed by the release's collection or not until a
    # later one; the engine's subject held it through that collection, and the 70B slice's w4g64 stayed on GPU 0
    # (20 GB) through int8's steps (session 28). No collection here beyond the release's own.
    import qcheck.variants

    extra = {"device_map": "auto", "max_memory": "cpu=1MB", "offload_folder": str(tmp_path / "off")} if placed else {}
    ctx = open_run(_options(tiny_folder, samples=2, variants=("int8", "w4g64"), **extra))
    assert (ctx.variants.reload is not None) == placed
    alive: list[weakref.ref] = []
    alive_after_release: list[int] = []
    original_build, original_free = ctx.variants.build, qcheck.variants.free_memory

    def build(name):
        variant = original_build(name)
        alive.append(weakref.ref(variant.model))
        return variant

    def free_memory():
        original_free()
        alive_after_release.append(sum(ref() is not None for ref in alive))

    monkeypatch.setattr(ctx.variants, "build", build)
    monkeypatch.setattr(qcheck.variants, "free_memory", free_memory)
    measure_run(ctx, {n: {"perplexity", "choice"} for n in ["fp32", *ctx.variants.names]})
    assert alive_after_release == [0, 0]


def test_a_failed_measurement_is_an_error_record_and_the_run_goes_on(tiny_folder, monkeypatch):
    # the module the engine will import: after an in-process pytester run has dropped it from sys.modules, `from
    # qcheck.measure import steps` would still give the package's stale attribute, and the patch would miss
    steps = importlib.import_module("qcheck.measure.steps")

    ctx = open_run(_options(tiny_folder, variants=("int8", "w4g64"), tokens=256))
    real = steps.STEPS["perplexity"]

    def flaky(ctx_, subject):
        if subject.name == "int8":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real.run(ctx_, subject)

    monkeypatch.setitem(steps.STEPS, "perplexity", steps.Step("perplexity", flaky, real.summary))
    store = measure_run(ctx, {"int8": {"perplexity"}, "w4g64": {"perplexity"}})
    failed = store.find("int8", "perplexity")
    assert failed.status == RecordStatus.ERROR and "illegal memory access" in failed.reason
    assert "Traceback" in failed.data["traceback"]
    assert store.has("w4g64", "perplexity")


def test_selected_checks_decide_what_is_measured(pytester, tmp_path, tiny_folder):
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-variants=int8,w4g64", "--qcheck-device=cpu", "--qcheck-tokens=256", "--qcheck-context=128",
        f"--qcheck-report={out}", "-k", "perplexity_finite")
    result.assert_outcomes(passed=2)
    report = json.loads((out / "qcheck-report.json").read_text())
    taken = {(r["variant"], r["measurement"]) for r in report["records"]["records"]}
    assert taken == {("fp32", "build"), ("int8", "build"), ("int8", "perplexity"), ("w4g64", "build"),
                     ("w4g64", "perplexity")}


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory, tiny_folder):
    """A real `qcheck run` on a copy of the tiny model, whose folder is then deleted: judging can only use the JSON."""
    base = tmp_path_factory.mktemp("stored")
    model = base / "model"
    shutil.copytree(tiny_folder, model)
    out = base / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "qcheck.cli", "run", "--model", str(model), "--variants", "fp16,int8,w4g64",
         "--device", "cpu", "--tokens", "512", "--context", "128", "--out", str(out),
         "-k", "quantization_applied or perplexity_order or close_to or plan_followed"],
        check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(model)
    return out / "qcheck-report.json"


def _verdicts(path):
    data = json.loads(path.read_text())
    return {(c["name"], c.get("variant")): c["status"] for c in data["checks"]}


def test_judge_reproduces_the_verdicts_from_the_json_alone(stored_run, tmp_path):
    out = tmp_path / "judged"
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "judge", str(stored_run), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    original = json.loads(stored_run.read_text())
    expected = 1 if original["status"] == "FAIL" else 0
    assert proc.returncode == expected, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _verdicts(out / "qcheck-report.json") == _verdicts(stored_run)
    judged = json.loads((out / "qcheck-report.json").read_text())
    assert judged["records"] == original["records"]
    assert judged["meta"]["judged_from"] == str(stored_run)
    # the records keep the timeline of the run that measured them; the report's meta has the judging run's own
    assert list(original["records"]["meta"]["timeline"])[-2:] == ["measured", "judged"]
    assert list(judged["meta"]["timeline"]) == ["imported", "collected", "judged"]


def test_a_changed_threshold_changes_the_verdict_without_a_model(stored_run, tmp_path, pytester, monkeypatch):
    from qcheck.inputs import models

    closeness = importlib.import_module("qcheck.invariants.closeness")  # the module the suite imports (pytester
    # runs drop modules they imported, so a package attribute can point at an older copy)

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("judging must not load a model"))
    before = _verdicts(stored_run)[("precision_differs_from_fp32", "int8")]
    assert before == "PASS"
    monkeypatch.setitem(closeness.CLOSE_TO_REFERENCE, "int8", closeness.Bound(0.0, "a test: no change allowed"))
    out = tmp_path / "rejudged"
    pytester.runpytest_inprocess("--pyargs", "qcheck.suite.test_precision_applied", "-p", "no:cacheprovider",
                                 f"--qcheck-records={stored_run}", f"--qcheck-report={out}", "-k", "close_to")
    after = _verdicts(out / "qcheck-report.json")[("precision_differs_from_fp32", "int8")]
    assert after in ("WARN", "FAIL") and after != "PASS"


def test_gpu_checks_of_a_cpu_run_stay_skipped_when_judged(stored_run, tmp_path, pytester, monkeypatch):
    """Judging CPU records must not run the gpu-marked checks on them (found on the default run: slowdown_bound
    skipped in the run, PASSed on CPU timings when judged). A GPU run's records are judged wherever the judge runs."""
    out = tmp_path / "judged-gpu"
    pytester.runpytest_inprocess("--pyargs", "qcheck.suite.test_latency", "-p", "no:cacheprovider",
                                 f"--qcheck-records={stored_run}", f"--qcheck-report={out}")
    checks = json.loads((out / "qcheck-report.json").read_text())["checks"]
    gpu = [c for c in checks if c["name"] in ("slowdown_bound", "latency_order", "energy_per_token")]
    assert gpu and all(c["status"] == "SKIPPED" for c in gpu)
    assert all("no CUDA device on the machine that measured this run" in c["message"] for c in gpu)


def test_workers_record_what_one_process_records(tiny_folder, monkeypatch, capsys):
    """Issue 20: variants spread over worker processes (here 2 CPU workers) give the same records as one process;
    only timings differ. The store keeps every variant, the reference's records come from worker 0. The workers
    share the CPU, so the timed measurement (latency) is left out of their shares and taken by the parent
    afterwards, alone on the device, for the reference and each timed variant."""
    from qcheck.engine import measure_parallel

    needs = {"fp32": {"perplexity", "latency"}, "int8": {"perplexity", "weights", "fidelity", "latency"},
             "w4g64": {"perplexity", "weights", "fidelity"}, "fixed8.4": {"perplexity"}}
    one = measure_run(open_run(_options(tiny_folder, variants=("int8", "w4g64", "fixed8.4"), tokens=256)), needs)
    monkeypatch.setenv("QCHECK_PROGRESS", "1")  # the parent's live line (the workers keep quiet)
    two = measure_parallel(open_run(_options(tiny_folder, variants=("int8", "w4g64", "fixed8.4"), tokens=256,
                                             workers=2)), needs, 2)
    err = capsys.readouterr().err
    assert "qcheck, 2 workers" in err and "4/4" in err  # the four subjects counted as the workers finish them
    assert "int8: latency" in err  # then the parent's timings, variant by variant
    assert two.meta["workers"] == 2 and two.variants == one.variants
    for record in one:
        other = two.find(record.variant, record.measurement)
        assert other is not None and other.status == record.status, (record.variant, record.measurement)
        if record.measurement == "latency":
            continue  # a timing: its figures differ from run to run
        strip = {"seconds", "manifest"}
        assert {k: v for k, v in other.data.items() if k not in strip} == \
            {k: v for k, v in record.data.items() if k not in strip}, (record.variant, record.measurement)
    assert two.find("int8", "latency").status == RecordStatus.OK
    assert two.meta["timed_after_workers"]["measurements"] == ["latency"]
    assert "2 workers shared the CPU" in two.meta["timed_after_workers"]["why"]
    assert set(two.meta["variant_seconds"]) == {"int8"}  # the parent built int8 again for its timing, nothing else
    measured = [name for names in two.meta["workers_measured"].values() for name in names]
    assert sorted(measured) == ["fixed8.4", "fp32", "int8", "w4g64"]  # each subject taken by exactly one worker
    from qcheck.report.markdown import placement_lines

    assert ("workers: 2 processes measured the variants; 2 workers shared the CPU: each timing was taken afterwards "
            "in the parent process, alone on the device (latency)") in placement_lines(two.meta)


def _dies_after_taking_one(options, shares, queue, taken, done, reference, device_index, share, out, worker):
    """A worker for the test below (run in a spawned process): worker 0 is the real one, started once another has
    taken the first variant off the shared list; that other dies before recording anything."""
    import os
    import time

    from qcheck.engine import _worker

    if reference is not None:
        while taken.value < 1:
            time.sleep(0.05)
        return _worker(options, shares, queue, taken, done, reference, device_index, share, out, worker)
    with taken.get_lock():
        taken.value += 1
    os._exit(3)


def test_a_worker_that_dies_leaves_errors_for_what_it_took(tiny_folder, monkeypatch):
    """A worker that dies (killed for memory, a crash in a kernel) loses only the variant it had taken: each of its
    records is an ERROR naming the worker and its exit code, and the other worker measures every other variant."""
    from qcheck import engine

    monkeypatch.setattr(engine, "_worker", _dies_after_taking_one)
    monkeypatch.setattr(engine, "_OPENED", {})  # a fresh context: another test's store may hold these records
    needs = {"fp32": {"perplexity"}, "int8": {"perplexity", "weights"}, "w4g64": {"perplexity", "weights"},
             "fixed8.4": {"perplexity"}}
    store = engine.measure_parallel(open_run(_options(tiny_folder, variants=("int8", "w4g64", "fixed8.4"),
                                                      tokens=256, workers=2)), needs, 2)
    errors = [r for r in store if r.status == RecordStatus.ERROR]
    lost = {r.variant for r in errors}
    assert len(lost) == 1, [(r.variant, r.measurement, r.reason) for r in errors]
    assert lost == {"int8"}  # the first on the list
    assert {r.measurement for r in errors} == {"build", "perplexity", "weights"}
    assert all(r.reason == "no worker recorded it: worker 1 (exit 3) ended before finishing what it had taken"
               for r in errors)
    assert store.meta["workers_measured"] == {"0": ["fp32", "w4g64", "fixed8.4"]}
    for other in ("fp32", "w4g64", "fixed8.4"):
        assert all(store.find(other, m).status == RecordStatus.OK for m in needs[other]), other


def _stopped_parallel_run(folder, monkeypatch, worker, ready):
    """A two-worker run of `worker` (a module-level function, for spawn) on perplexity alone, which the parent
    stops, as Ctrl-C or the plugin's SIGTERM would, once `ready(procs, done)` holds (or after 120 s)."""
    import time

    from qcheck import engine

    def interrupted(procs, done, total):
        deadline = time.monotonic() + 120
        while not ready(procs, done) and time.monotonic() < deadline:
            time.sleep(0.1)
        raise KeyboardInterrupt("terminated by signal 15 (SIGTERM)")

    monkeypatch.setattr(engine, "_worker", worker)
    monkeypatch.setattr(engine, "_follow", interrupted)
    monkeypatch.setattr(engine, "_OPENED", {})
    ctx = open_run(_options(folder, variants=("int8", "w4g64"), tokens=256, workers=2))
    with pytest.raises(KeyboardInterrupt):
        engine.measure_parallel(ctx, {"fp32": {"perplexity"}, "int8": {"perplexity"}, "w4g64": {"perplexity"}}, 2)
    return ctx


def _hangs_after_the_reference(options, shares, queue, taken, done, reference, device_index, share, out, worker):
    """A worker for the test below: worker 0 measures the reference (and writes its store), then both hang as a
    long variant would."""
    import time

    from qcheck.engine import _worker

    if reference is not None:
        _worker(options, {}, [], taken, done, reference, device_index, share, out, worker)
    while True:
        time.sleep(1)


def test_an_interrupted_run_stops_its_workers_and_keeps_what_they_finished(tiny_folder, monkeypatch):
    """Ctrl-C or SIGTERM (which the plugin turns into KeyboardInterrupt) in the parent stops the workers at once:
    they are not daemons, so the parent would otherwise wait at exit for their whole share. What a worker finished
    (its store is written after each subject) is in the interrupted run's store."""
    import multiprocessing
    import time

    start = time.monotonic()
    ctx = _stopped_parallel_run(tiny_folder, monkeypatch, _hangs_after_the_reference,
                                ready=lambda procs, done: done.value >= 1)  # the reference is measured and written
    assert time.monotonic() - start < 120
    assert multiprocessing.active_children() == []  # stopped, not left running the variants
    assert ctx.store.find("fp32", "perplexity").status == RecordStatus.OK  # worker 0 finished it
    assert ("int8", "perplexity") not in ctx.store and ctx.store.meta["workers"] == 2


def _cut_in_a_variants_step(options, shares, queue, taken, done, reference, device_index, share, out, worker):
    """A worker for the test below: the real one, whose variants' perplexity step notes a batch, leaves a mark
    beside its store and hangs (as a long attack would) until the parent stops it."""
    import dataclasses
    import time
    from pathlib import Path

    from qcheck.engine import _worker
    from qcheck.measure import steps

    real = steps.STEPS["perplexity"]

    def hangs(ctx, s):
        if s.name == "fp32":
            return real.run(ctx, s)
        ctx.note_in_flight(planned_batch_size=4)
        Path(out).with_suffix(".hanging").touch()
        while True:
            time.sleep(0.1)

    steps.STEPS["perplexity"] = dataclasses.replace(real, run=hangs)
    _worker(options, shares, queue, taken, done, reference, device_index, share, out, worker)


def test_stopped_workers_name_the_steps_they_cut(tiny_folder, monkeypatch):
    """SIGTERM from the parent (or a scheduler, which signals the process group) in a worker's step: the worker
    writes its store with that step, and the run's store names each worker's cut, as one process's does."""
    from qcheck.report.run import RunReport

    ctx = _stopped_parallel_run(tiny_folder, monkeypatch, _cut_in_a_variants_step,  # both inside a variant's step
                                ready=lambda procs, done: sum(out.with_suffix(".hanging").exists()
                                                              for _, _, out in procs) == 2)
    cuts = ctx.store.meta["workers_cut_in"]
    assert set(cuts) == {"0", "1"}, ctx.store.meta
    assert {c["variant"] for c in cuts.values()} == {"int8", "w4g64"}
    for worker, cut in cuts.items():
        assert cut["measurement"] == "perplexity" and cut["planned_batch_size"] == 4 and cut["worker"] == int(worker)
        assert cut["after_s"] >= 0
    assert ctx.store.meta["cut_in"] in cuts.values()
    assert ctx.store.find("fp32", "perplexity").status == RecordStatus.OK
    assert ("int8", "perplexity") not in ctx.store and ("w4g64", "perplexity") not in ctx.store
    report = RunReport(records=ctx.store)
    report.mark_unfinished(["t"], reason="interrupted")
    reason = report.interruption["reason"]
    assert "cut in int8's perplexity after" in reason and "cut in w4g64's perplexity after" in reason
    assert "worker 0" in reason and "worker 1" in reason and "planned batch size 4" in reason


def _hangs_while_loading(options, shares, queue, taken, done, reference, device_index, share, out, worker):
    """A worker for the test below: the real one, whose model load leaves a mark beside its store and hangs (as a
    70B checkpoint's minutes of loading would) until the parent stops it."""
    import time
    from pathlib import Path

    from qcheck import engine

    def loading(*args, **kwargs):
        Path(out).with_suffix(".loading").touch()
        while True:
            time.sleep(0.1)

    engine.open_run = loading
    engine._worker(options, shares, queue, taken, done, reference, device_index, share, out, worker)


def test_workers_stopped_while_loading_name_that_cut(tiny_folder, monkeypatch):
    """A worker stopped before its model is loaded has no records to write, but the run's reason still says where
    each was cut, not only that variants are missing."""
    from qcheck.report.run import RunReport

    ctx = _stopped_parallel_run(tiny_folder, monkeypatch, _hangs_while_loading,
                                ready=lambda procs, done: sum(out.with_suffix(".loading").exists()
                                                              for _, _, out in procs) == 2)
    cuts = ctx.store.meta["workers_cut_in"]
    assert set(cuts) == {"0", "1"}, ctx.store.meta
    for worker, cut in cuts.items():
        assert cut["measurement"] == "load" and cut["worker"] == int(worker) and cut["after_s"] >= 0
    assert ("fp32", "perplexity") not in ctx.store
    report = RunReport(records=ctx.store)
    report.mark_unfinished(["t"], reason="interrupted")
    reason = report.interruption["reason"]
    assert reason.count("cut while loading the model after") == 2, reason
    assert "(worker 0)" in reason and "(worker 1)" in reason


def test_workers_take_the_longest_variants_first(tiny_folder):
    """The shared list the workers take from starts with the variants likely to take longest (bitsandbytes'
    host-bound kernels), so none of them is started last while the other workers sit idle; the rest keep the run's
    order."""
    from types import SimpleNamespace

    from qcheck.engine import longest_first
    from qcheck.variants import DEFAULT_VARIANTS, builtin_plan

    ctx = SimpleNamespace(variants=SimpleNamespace(plans={n: builtin_plan(n) for n in DEFAULT_VARIANTS}))
    order = longest_first(ctx, list(DEFAULT_VARIANTS))
    assert order[:2] == ["bnb-int8", "bnb-nf4"]
    assert order[2:] == [n for n in DEFAULT_VARIANTS if not n.startswith("bnb-")]
    ptq = SimpleNamespace(variants=SimpleNamespace(plans={"int8": builtin_plan("int8")}))
    assert longest_first(ptq, ["int8", "gptq-model"]) == ["gptq-model", "int8"]  # a PTQ backend calibrates


def test_the_parent_reference_is_parked_on_the_host_only_on_a_gpu_run(tiny_folder):
    """Worker 0 shares GPU 0 with the parent: the parent's reference waits on the host while workers measure."""
    from types import SimpleNamespace

    import torch

    from qcheck.engine import _reference_on_host

    ctx = open_run(_options(tiny_folder, variants=("int8",), tokens=256))
    with _reference_on_host(ctx) as parked:
        assert not parked  # a CPU run: nothing moves
    moved: list[str] = []
    model = ctx.loaded.model
    original_to = model.to
    fake_gpu = SimpleNamespace(gpu=True, loaded=ctx.loaded, device=torch.device("cpu"))
    model.to = lambda device: moved.append(str(device)) or original_to(device)
    try:
        with _reference_on_host(fake_gpu) as parked:
            assert moved == ["cpu"] and parked
        assert moved == ["cpu", "cpu"]  # back to the run's device (here the CPU stands in for it)
    finally:
        del model.to
