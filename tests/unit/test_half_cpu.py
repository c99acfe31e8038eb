"""16-bit products on a CPU as fp32 GEMMs (`qcheck.measure.half_cpu`): the same arithmetic as torch's own half GEMMs
up to the order of fp32 sums, left alone where it does not apply (fp32, mixed dtypes, timings, --cpu-half-matmul
native), and a run's perplexities and verdicts agree with torch's kernels."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from qcheck.measure.half_cpu import Fp32AccumulateOnCpu, half_matmul

HALF = [torch.float16, torch.bfloat16]


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of the last place of the 16-bit dtype (by the float's bit pattern)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


def _within_fp32_sum_order(fast: torch.Tensor, native: torch.Tensor, magnitude: torch.Tensor, n: int) -> bool:
    """|fast - native| <= one 16-bit ulp of the result + 2 n u32 sum|products|: two fp32 accumulations of the same
    exact products in different orders (each within n u32 sum|products| of the exact sum), then one rounding each."""
    eps16 = torch.finfo(native.dtype).eps
    ulp = torch.exp2(torch.floor(torch.log2(torch.maximum(fast.double().abs(), native.double().abs()).clamp_min(
        torch.finfo(native.dtype).tiny)))) * eps16
    bound = ulp + 2 * n * 2.0**-24 * magnitude
    return bool(((fast.double() - native.double()).abs() <= bound).all())


@pytest.mark.parametrize("dtype", HALF)
def test_products_equal_torch_kernels_up_to_the_order_of_fp32_sums(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 96, generator=gen).to(dtype)
    w = torch.randn(80, 96, generator=gen).to(dtype)
    b = torch.randn(80, generator=gen).to(dtype)
    y = torch.randn(2, 96, 40, generator=gen).to(dtype)
    m = torch.randn(64, 80, generator=gen).to(dtype)
    cases = {"linear": lambda: F.linear(x, w, b), "matmul": lambda: x @ y, "bmm": lambda: torch.bmm(x, y),
             "mm": lambda: torch.mm(x[0], w.T), "addmm": lambda: torch.addmm(m, x[0], w.T)}
    a = {k: v.double().abs() for k, v in {"x": x, "w": w, "b": b, "y": y, "m": m}.items()}
    sums = {"linear": a["x"] @ a["w"].T + a["b"], "matmul": a["x"] @ a["y"], "bmm": a["x"] @ a["y"],
            "mm": a["x"][0] @ a["w"].T, "addmm": a["m"] + a["x"][0] @ a["w"].T}
    for name, fn in cases.items():
        native = fn()
        with half_matmul("fast") as mode:
            fast = fn()
        assert mode.calls == 1, name
        assert fast.dtype == native.dtype == dtype and fast.shape == native.shape
        assert _within_fp32_sum_order(fast, native, sums[name], 97), name
        assert (_ulps(fast, native) > 0).float().mean() < 0.02, name  # most outputs are bit for bit the same
        hi = {"linear": lambda: F.linear(x.double(), w.double(), b.double()),
              "matmul": lambda: x.double() @ y.double(), "bmm": lambda: torch.bmm(x.double(), y.double()),
              "mm": lambda: torch.mm(x[0].double(), w.T.double()),
              "addmm": lambda: torch.addmm(m.double(), x[0].double(), w.T.double())}[name]()  # float64 product
        err_native = (native.double() - hi).abs().mean().item()
        err_fast = (fast.double() - hi).abs().mean().item()
        assert err_fast <= err_native * 1.05, (name, err_fast, err_native)


def test_fp32_and_mixed_dtypes_are_left_to_torch():
    a32, w32 = torch.randn(4, 8), torch.randn(3, 8)
    with half_matmul("fast") as mode:
        assert torch.equal(F.linear(a32, w32), F.linear(a32, w32))
        with pytest.raises(RuntimeError):  # torch's own error for mixed dtypes, not a silent upcast
            F.linear(a32.half(), w32)
    assert mode.calls == 0
    with half_matmul("native") as none:
        assert none is None


def test_overflow_past_fp16_range_still_gives_inf():
    x = torch.full((1, 4), 200.0, dtype=torch.float16)
    w = torch.full((2, 4), 200.0, dtype=torch.float16)  # each output 160,000 > 65,504
    native = F.linear(x, w)
    with half_matmul("fast"):
        fast = F.linear(x, w)
    assert torch.isinf(native).all() and torch.isinf(fast).all()


def test_gradients_flow_as_through_torch_kernels():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=gen).half()
    x0 = torch.randn(4, 32, generator=gen).half()
    grads = []
    for mode in ("native", "fast"):
        x = x0.clone().requires_grad_(True)
        with half_matmul(mode):
            F.linear(x, w).float().square().sum().backward()
        grads.append(x.grad)
    assert grads[1].dtype == torch.float16
    assert torch.allclose(grads[0].float(), grads[1].float(), rtol=2e-3, atol=1e-2)


def test_engine_uses_it_for_every_cpu_step_of_a_16bit_model_except_timings():
    from contextlib import nullcontext

    from qcheck.engine import _arithmetic
    from qcheck.measure.steps import STEPS
    from qcheck.options import RunOptions

    half = torch.nn.Linear(4, 4).to(torch.bfloat16)
    mixed = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4).half())  # fp32 grid layers in fp16
    full = torch.nn.Linear(4, 4)
    cpu = SimpleNamespace(gpu=False, options=RunOptions(device="cpu"))
    timed = {name for name, step in STEPS.items() if step.timed}
    assert timed == {"latency", "latency_casts", "energy"}
    for name, step in STEPS.items():
        for model in (half, mixed):
            assert isinstance(_arithmetic(cpu, step, model), nullcontext) == (name in timed), name
        assert isinstance(_arithmetic(cpu, step, full), nullcontext)  # fp32: no per-op Python call
        assert isinstance(_arithmetic(cpu, step, None), nullcontext)
    native = SimpleNamespace(gpu=False, options=RunOptions(device="cpu", cpu_half_matmul="native"))
    gpu = SimpleNamespace(gpu=True, options=RunOptions())
    assert isinstance(_arithmetic(native, STEPS["perplexity"], half), nullcontext)
    with _arithmetic(cpu, STEPS["perplexity"], half) as mode:
        assert isinstance(mode, Fp32AccumulateOnCpu)
    with _arithmetic(gpu, STEPS["perplexity"], half) as mode:  # a GPU: cuDNN attention left out, no fp32-GEMM mode
        assert not isinstance(mode, Fp32AccumulateOnCpu)
        assert not torch.backends.cuda.cudnn_sdp_enabled()


def test_bad_mode_is_a_usage_error_naming_the_flag():
    from qcheck.errors import ConfigError
    from qcheck.options import RunOptions

    with pytest.raises(ConfigError) as info:
        RunOptions(cpu_half_matmul="fp32")
    assert info.value.field == "--cpu-half-matmul" and "fast or native" in str(info.value)


def _run(pytester, folder, out, mode):
    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={folder}",
        "--qcheck-variants=fp16,bf16", "--qcheck-device=cpu", "--qcheck-tokens=256", "--qcheck-context=128",
        f"--qcheck-cpu-half-matmul={mode}", f"--qcheck-report={out}", "-k", "perplexity_finite or perplexity_order or precision_differs")
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    return json.loads((out / "qcheck-report.json").read_text())


def test_a_run_gives_torch_kernels_perplexities_and_verdicts(pytester, tmp_path, tiny_folder):
    native = _run(pytester, tiny_folder, tmp_path / "native", "native")
    fast = _run(pytester, tiny_folder, tmp_path / "fast", "fast")
    ppl = {}
    for name, report in (("native", native), ("fast", fast)):
        ppl[name] = {r["variant"]: r["data"]["perplexity"] for r in report["records"]["records"]
                     if r["measurement"] == "perplexity" and r["status"] == "ok"}
    assert set(ppl["fast"]) == {"fp32", "fp16", "bf16"}
    for variant, value in ppl["native"].items():
        # fp32 is untouched; 16-bit values differ by where fp32 sums round (bf16 has 8 significant bits)
        tol = 0.0 if variant == "fp32" else 2e-3
        assert math.isclose(ppl["fast"][variant], value, rel_tol=tol, abs_tol=0.0), (variant, value, ppl["fast"])
    verdicts = [{(c["name"], c.get("variant")): c["status"] for c in r["checks"]} for r in (native, fast)]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) >= 3
    assert "fp32 GEMMs of the 16-bit values" in (tmp_path / "fast" / "qcheck-report.md").read_text()
    assert "torch's own CPU kernels" in (tmp_path / "native" / "qcheck-report.md").read_text()
