"""The pytest plugin, exercised through real pytest runs (pytester) of the shipped suite."""
import json
import shutil
import sys

import pytest


@pytest.fixture(scope="module")
def warm_model():
    from qcheck.inputs.models import load_model

    return load_model(cache=True)  # the in-process runs below reuse this object


@pytest.fixture(scope="module")
def wikitext():
    """The suite's default evaluation text (WikiText-2 test from ../shared/data or $QCHECK_DATA_DIR)."""
    from qcheck.errors import DataError
    from qcheck.inputs.data import WIKITEXT_TEST, find_data_file

    try:
        return find_data_file(WIKITEXT_TEST)
    except DataError as exc:
        pytest.skip(f"WikiText-2 not available: {exc}")


def test_suite_run_writes_report_with_variant_metrics(pytester, tmp_path, warm_model, wikitext):
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite.test_precision_applied", "-p", "no:cacheprovider",
        "--qcheck-variants=int8", "--qcheck-tokens=256", "--qcheck-context=128", f"--qcheck-report={out}",
        "-k", "quantization_applied or perplexity_finite")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*qcheck report: *qcheck-report.json*"])
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["status"] == "PASS" and report["complete"] is True
    checks = {(c["name"], c["variant"]): c for c in report["checks"]}
    applied = checks[("quantization_applied", "int8")]
    assert applied["status"] == "PASS" and applied["evidence"]["logits"]["identical"] is False
    ppl = report["variants"]["int8"]["metrics"]["perplexity"]
    assert ppl["context"] == 128 and 128 < ppl["n_tokens"] <= 255 and ppl["n_windows"] == 2
    assert report["variants"]["int8"]["manifest_summary"]["bits"] == {"8": 210}
    assert "quantization_applied" in (out / "qcheck-report.md").read_text()
    # a pytest run (no CLI) marks from collection on: no stale marks of earlier in-process runs
    assert list(report["records"]["meta"]["timeline"]) == ["collected", "memory_checked", "loaded", "opened",
                                                           "measured", "judged"]
    result.stdout.fnmatch_lines(["*qcheck: PASS; report written in * s*"])


def test_violation_in_a_user_test_is_recorded_as_fail(pytester, tmp_path):
    pytester.makepyfile(test_user="""
        from qcheck.invariants import assert_robust_le_clean

        def test_robust_above_clean(qcheck_record):
            qcheck_record(assert_robust_le_clean(0.52, 0.61, n=400, variant="4-bit"))
    """)
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--qcheck-report={out}")
    result.assert_outcomes(failed=1)
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["status"] == "FAIL"
    (check,) = report["checks"]
    assert check["name"] == "robust_le_clean" and check["variant"] == "4-bit"
    assert "robust" in check["message"]


def test_gpu_marked_tests_skip_with_reason_without_cuda(pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path is not taken")
    pytester.makepyfile(test_gpu="""
        import pytest

        @pytest.mark.gpu
        def test_needs_gpu():
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*gpu test: no CUDA device on this machine*"])


def test_cuda_device_without_cuda_is_a_usage_error(pytester):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--qcheck-device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qcheck-device cuda was asked for, but no CUDA device is available*"])


def test_bad_input_found_loading_the_model_is_a_usage_error_in_pytests_words(pytester, tmp_path, tiny_folder):
    """A check of the loaded model (here a context past its 2,048 positions) under plain pytest: a usage error
    (exit 4) naming pytest's flag, as `qcheck run` exits 2 naming its own, not one ERROR per test."""
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite.test_precision_applied", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-device=cpu", "--qcheck-variants=int8", "--qcheck-context=4096", f"--qcheck-report={out}",
        "-k", "perplexity_finite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert "--qcheck-context 4096 is longer than the 2048 positions" in text
    assert "pass --qcheck-context 2048 or less" in text and "Traceback" not in text
    assert not (out / "qcheck-report.json").exists()


def test_a_run_under_pytest_xdist_reports_every_workers_checks(pytester, tmp_path, tiny_folder):
    """`pytest -n 2`: the checks run in the workers, and the controller's report had none ("no check ran") while
    pytest counted passes (session 29). Each worker now hands its share to the controller, which writes one report
    with every check; timings are skipped with the reason, since the other worker shares the device."""
    pytest.importorskip("xdist")
    out = tmp_path / "rep"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadfile", "--pyargs", "qcheck.suite.test_precision_applied", "qcheck.suite.test_latency",
        "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}", "--qcheck-device=cpu", "--qcheck-variants=int8",
        "--qcheck-tokens=256", "--qcheck-context=128", f"--qcheck-report={out}",
        "-k", "perplexity_finite or quantization_applied or latency_plausible")
    outcomes = result.parseoutcomes()
    report = json.loads((out / "qcheck-report.json").read_text())
    checks = {(c["name"], c["variant"]): c for c in report["checks"]}
    assert checks[("perplexity_finite", "int8")]["status"] == "PASS"
    assert checks[("quantization_applied", "int8")]["status"] == "PASS"
    timed = checks[("plausible_speed", "int8")]
    assert timed["status"] == "SKIPPED" and "not timed under pytest-xdist (2 workers)" in timed["message"]
    assert report["counts"]["PASS"] == outcomes["passed"] and report["counts"]["SKIPPED"] == outcomes["skipped"]
    assert report["status"] == "PASS" and report["complete"] is True
    assert sorted(report["meta"]["xdist_workers"]) == ["gw0", "gw1"]
    assert report["variants"]["int8"]["metrics"]["perplexity"]["context"] == 128  # the records came along


def test_a_crashed_xdist_worker_leaves_the_report_incomplete_and_says_so(pytester, tmp_path):
    """A worker that dies (OOM killer, segfault) hands over nothing: the controller's report keeps the other
    workers' checks but is marked unfinished, naming the lost worker, not a complete PASS."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_holds="""
        from qcheck.invariants import assert_robust_le_clean

        def test_robust_below_clean(qcheck_record):
            qcheck_record(assert_robust_le_clean(0.61, 0.41, n=400, variant="4-bit"))
    """, test_dies="""
        import os

        def test_killed():
            os._exit(1)
    """)
    out = tmp_path / "rep"
    pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile", "--max-worker-restart", "0", "-p",
                                  "no:cacheprovider", f"--qcheck-report={out}")
    report = json.loads((out / "qcheck-report.json").read_text())
    assert [c["name"] for c in report["checks"]] == ["robust_le_clean"]
    assert report["complete"] is False and report["status"] == "INCONCLUSIVE"
    assert "pytest-xdist worker(s) lost" in report["interruption"]["reason"]


def test_ptq_backend_runs_as_a_suite_variant(pytester, tmp_path, warm_model, wikitext):
    """--qcheck-ptq adds a backend's variant to every module; one this machine cannot build skips, saying why."""
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite.test_precision_applied", "qcheck.suite.test_ptq", "-p", "no:cacheprovider", "-rs",
        "--qcheck-variants=none", "--qcheck-ptq=bnb-config:int8", "--qcheck-ptq=torchao:float8-wo",
        "--qcheck-tokens=256", "--qcheck-context=128", f"--qcheck-report={out}")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*torchao-float8-wo (torchao:float8-wo) cannot be built here*"])
    report = json.loads((out / "qcheck-report.json").read_text())
    checks = {(c["name"], c["variant"]): c for c in report["checks"]}
    applied = checks[("ptq_applied", "bnb-config-int8")]
    assert applied["status"] == "PASS" and applied["evidence"]["module_classes"]["Linear8bitLt"] == 210
    assert checks[("reference_untouched", "bnb-config-int8")]["status"] == "PASS"
    variant = report["variants"]["bnb-config-int8"]
    assert variant["plan"]["ptq"] == "bnb-config:int8" and variant["plan"]["backend"] == "bitsandbytes"
    assert variant["metrics"]["perplexity"]["context"] == 128


KILLED_MID_RUN = """
    import os, signal

    def test_first(qcheck_record):
        from qcheck.results import CheckResult, Status
        qcheck_record(CheckResult("first", Status.PASS, "ran"))

    def test_killed():
        os.kill(os.getpid(), signal.SIGTERM)

    def test_never_runs():
        pass
"""


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
def test_sigterm_still_writes_the_report_marked_unfinished(pytester, tmp_path, twice):
    """A CI timeout (SIGTERM) mid-run ends the session through pytest, so the report says what did not run. GNU
    `timeout` signals the command and then its process group, so the same SIGTERM can arrive twice in a row: the
    second must not kill the session before it writes its report."""
    pytester.makepyfile(test_killed=KILLED_MID_RUN)
    if twice:
        pytester.makeconftest("""
            import os, signal

            def pytest_sessionfinish():
                os.kill(os.getpid(), signal.SIGTERM)  # the group's copy, while the session winds down
        """)
    out = tmp_path / "rep"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--qcheck-report={out}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["complete"] is False and "SIGTERM" in report["interruption"]["reason"]
    assert any(n.endswith("test_never_runs") for n in report["unfinished"])
    assert [c["name"] for c in report["checks"]] == ["first"]


def test_a_run_cut_inside_a_measurement_names_the_step_and_what_it_had_noted(pytester, tmp_path, tiny_folder):
    """SIGTERM (a scheduler's time limit) inside a variant's attack: the report says which step was cut, after how
    long, and the batch it had planned (session 27's 70B slice was cut in w4g64's attack and its report said only
    that 56 checks did not finish)."""
    pytester.makeconftest("""
        import dataclasses, os, signal, time

        from qcheck.measure import steps

        def killed(ctx, s):
            ctx.note_in_flight(questions=8, planned_batch_size=4)
            ctx.note_in_flight(batch_size=2, out_of_memory_at=[4])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

        steps.STEPS["robustness"] = dataclasses.replace(steps.STEPS["robustness"], run=killed)
    """)
    out = tmp_path / "rep"
    result = pytester.runpytest_subprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={tiny_folder}",
        "--qcheck-variants=int8", "--qcheck-device=cpu", "--qcheck-tokens=512", "--qcheck-context=128",
        f"--qcheck-report={out}", "-k", "robust")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    cut = report["interruption"]["cut_in"]
    assert cut["variant"] == "fp32" and cut["measurement"] == "robustness" and 0 <= cut["after_s"] < 30
    assert cut["planned_batch_size"] == 4 and cut["batch_size"] == 2 and cut["out_of_memory_at"] == [4]
    assert "cut in fp32's robustness after" in report["interruption"]["reason"]
    assert "planned batch size 4, batch size 2, out of memory at [4]" in report["interruption"]["reason"]
    assert "in_flight" not in report["records"]["meta"]
    assert "Run incomplete" in (out / "qcheck-report.md").read_text()


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs GNU coreutils' timeout")
def test_a_run_under_gnu_timeout_writes_its_report(pytester, tmp_path):
    """The real thing: `timeout` ends a run mid-test and the report is written, marked unfinished."""
    pytester.makepyfile(test_slow="""
        import time

        def test_first(qcheck_record):
            from qcheck.results import CheckResult, Status
            qcheck_record(CheckResult("first", Status.PASS, "ran"))

        def test_slow():
            time.sleep(600)
    """)
    out = tmp_path / "rep"
    result = pytester.run("timeout", "-s", "TERM", "30", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                          f"--qcheck-report={out}", str(pytester.path))
    assert result.ret == 124  # timeout's own status: it fired
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["complete"] is False and "SIGTERM" in report["interruption"]["reason"]
    assert any(n.endswith("test_slow") for n in report["unfinished"])


def test_prompts_and_ptq_options_reach_the_run_options(pytester, monkeypatch):
    """--qcheck-prompts sizes the generation slice apart from --qcheck-samples, --qcheck-new-tokens its budget;
    $QCHECK_PTQ adds to --qcheck-ptq."""
    monkeypatch.setenv("QCHECK_PTQ", "bnb-config:nf4, checkpoint=/models/gptq-w4/")
    pytester.makepyfile(test_opts="""
        from qcheck.pytest_plugin import variant_names

        def test_opts(qcheck_options, pytestconfig):
            assert qcheck_options.samples == 40 and qcheck_options.prompts == 12
            assert qcheck_options.new_tokens == 512
            assert qcheck_options.ptq == ("torchao:int8-wo", "bnb-config:nf4", "checkpoint=/models/gptq-w4/")
            assert variant_names(pytestconfig)[-3:] == ["torchao-int8-wo", "bnb-config-nf4", "gptq-w4"]
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--qcheck-samples=40", "--qcheck-prompts=12",
                                          "--qcheck-ptq=torchao:int8-wo", "--qcheck-new-tokens=512")
    result.assert_outcomes(passed=1)
