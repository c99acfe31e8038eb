"""The pytest plugin, exercised through real pytest runs (pytester) of the shipped suite."""
import json

import pytest


@pytest.fixture(scope="module")
def warm_model():
    from qcheck.models import load_model

    return load_model(cache=True)  # the in-process runs below reuse this object


def test_suite_run_writes_report_with_variant_metrics(pytester, tmp_path, warm_model):
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


def test_violation_in_a_user_test_is_recorded_as_fail(pytester, tmp_path):
    pytester.makepyfile(test_user="""
        from qcheck.invariants import assert_16bit_differs

        def test_identical(qcheck_record):
            qcheck_record(assert_16bit_differs(171.96, 171.96, variant="16-bit"))
    """)
    out = tmp_path / "rep"
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--qcheck-report={out}")
    result.assert_outcomes(failed=1)
    report = json.loads((out / "qcheck-report.json").read_text())
    assert report["status"] == "FAIL"
    (check,) = report["checks"]
    assert check["name"] == "precision_differs_from_fp32" and check["variant"] == "16-bit"
    assert "quantization was not applied" in check["message"]


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
