"""Timers, statistics, regime detection, energy refusal, hardware helpers, the latency invariants' decisions,
and the pytest-benchmark integration. CPU only, except where marked gpu."""
from __future__ import annotations

import json
import random
import time

import pytest
import torch
from torch import nn

from qcheck.benchmark_integration import benchmark_extra_info, synchronized_perf_counter
from qcheck.errors import ConfigError, InvariantViolation
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.latency import (
    assert_latency_order,
    assert_placement,
    assert_plausible_speed,
    assert_slowdown_bound,
    assert_throughput_honest,
)
from qcheck.measure.latency import (
    VariantKind,
    profile_call,
    rank_kernels,
    short_kernel_name,
    time_by_kernel,
    variant_kind,
)
from qcheck.measure.timing import (
    COMPUTE_BOUND,
    LAUNCH_BOUND,
    DeviceInfo,
    Timing,
    TimingError,
    classify_regime,
    compute_capability,
    degenerate_tensors,
    device_info,
    flops_ceiling,
    forward_flops,
    has_tensor_cores,
    measure,
    measure_energy,
    numeric_flags,
    pinned_flags,
    placement_problems,
    random_input_ids,
    time_forward,
)
from qcheck.quant.apply import quantize
from qcheck.results import Status


def gpu_info(cc=(9, 0), name="NVIDIA H100 80GB HBM3") -> DeviceInfo:
    """A description of a GPU (data, as device_info would return it there)."""
    return DeviceInfo("cuda:0", name, cc, cc >= (7, 0), "580.159.04", "13.0", torch.__version__, 132, 79.2)


def cuda_timing(center: float, spread: float = 0.01, n: int = 30, host: float | None = None, seed: int = 0,
                label: str = "") -> Timing:
    """Event-timed samples around `center` ms (a recorded distribution, for the decision logic)."""
    rng = random.Random(seed)
    samples = tuple(center * (1 + rng.uniform(-spread, spread)) for _ in range(n))
    hosts = tuple((host if host is not None else center * 0.1) for _ in range(n))
    return Timing(samples, (center * 5,), "cuda-events", "cuda:0", n * center / 1000, "test", host_ms=hosts,
                  label=label)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while timing: on a shared, oversubscribed CPU two OpenMP threads stall at barriers
    (a 1x4 forward of the tiny model took 1 s with 2 threads there, 0.65 ms with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return random_init_like(tiny_llama_config(), seed=0)


# ----------------------------------------------------------------------------------------- measure

def test_measure_cpu_repeats_until_min_count_and_min_time():
    t = measure(lambda: time.sleep(0.001), device="cpu", warmup=2, min_repeats=3, min_time_s=0.05)
    assert t.method == "perf_counter_ns" and len(t.warmup_ms) == 2
    assert t.n >= 3 and t.total_s >= 0.05
    assert all(s >= 0.9 for s in t.samples_ms)
    assert "reached 3 repeats and 0.05 s" == t.stop_reason


def test_measure_stops_at_max_repeats_and_says_so():
    t = measure(lambda: None, device="cpu", warmup=0, min_repeats=2, max_repeats=4, min_time_s=10)
    assert t.n == 4 and "max_repeats=4" in t.stop_reason


def test_measure_rejects_bad_budgets_and_graph_on_cpu():
    with pytest.raises(ConfigError):
        measure(lambda: None, device="cpu", min_repeats=0)
    with pytest.raises(ConfigError):
        measure(lambda: None, device="cpu", graph=True)


def test_timing_statistics_and_metric():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0), (50.0,), "perf_counter_ns", "cpu", 0.1, "test")
    assert t.median_ms == 3.0
    assert t.quartiles_ms == (2.0, 4.0) and t.iqr_ms == 2.0
    assert t.rel_iqr == pytest.approx(2 / 3)
    m = t.to_metric(simulated=True)
    assert m["value"] == 3.0 and m["interval"]["low"] == 2.0 and m["simulated"] is True
    assert m["warmup_ms"] == [50.0]
    json.dumps(t.to_dict())


def test_timing_refuses_empty_or_nan_samples():
    with pytest.raises(TimingError):
        Timing((), (), "perf_counter_ns", "cpu", 0, "")
    with pytest.raises(TimingError):
        Timing((1.0, float("nan")), (), "perf_counter_ns", "cpu", 0, "")


def test_time_forward_pins_tf32_off_and_records_shape(tiny):
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ids = random_input_ids(512, 2, 8)
        t = time_forward(tiny, ids, warmup=1, min_repeats=3, min_time_s=0)
        assert t.info["flags"]["tf32_matmul"] is False and t.info["shape"] == [2, 8]
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


def test_pinned_flags_restore():
    before = numeric_flags()
    with pinned_flags(tf32=True, cudnn_benchmark=True) as flags:
        assert flags["tf32_matmul"] and flags["cudnn_benchmark"]
    assert numeric_flags() == before


def test_random_input_ids_are_never_zero_and_seeded():
    a, b = random_input_ids(100, 4, 16, seed=3), random_input_ids(100, 4, 16, seed=3)
    assert torch.equal(a, b) and bool((a > 0).all())


# ----------------------------------------------------------------------------------------- hardware, regime, energy

def test_cpu_hardware_helpers():
    assert compute_capability("cpu") is None and has_tensor_cores("cpu") is False
    info = device_info("cpu")
    assert info.device == "cpu" and info.torch == torch.__version__ and "tf32_matmul" in info.flags
    assert flops_ceiling("cpu") > 1e9


def test_regime_from_host_time_graph_gain_and_scaling():
    launch = classify_regime(cuda_timing(10.0, host=9.5))
    assert launch.kind == LAUNCH_BOUND and "waits on launches" in launch.reason
    compute = classify_regime(cuda_timing(170.0, host=20.0))
    assert compute.kind == COMPUTE_BOUND
    graph = classify_regime(cuda_timing(24.0, host=5.0), graph_timing=cuda_timing(5.15))
    assert graph.kind == LAUNCH_BOUND and "CUDA-graph replay" in graph.reason
    scaled = classify_regime(cuda_timing(20.0, host=2.0), scaled=(cuda_timing(22.0), 16.0))
    assert scaled.kind == LAUNCH_BOUND and "16x the work" in scaled.reason
    cpu = classify_regime(Timing((1.0,), (), "perf_counter_ns", "cpu", 0, ""))
    assert cpu.kind == "cpu"


def test_energy_unsupported_says_why_and_windows_are_long():
    e = measure_energy(lambda: None, device="cpu")
    assert e.supported is False and "NVML" in e.reason and e.joules_per_call is None
    assert e.per_token(100) is None
    with pytest.raises(ConfigError):
        measure_energy(lambda: None, device="cpu", window_s=0.1)
    with pytest.raises(ConfigError):
        measure_energy(lambda: None, device="cpu", idle_s=0.1)
    assert measure_energy(lambda: None, device="cpu", idle_s=0.1, idle_w=60.0).supported is False  # no idle window


@pytest.mark.gpu
def test_energy_takes_an_idle_power_measured_before_instead_of_its_own_window(monkeypatch):
    """The energy step measures the GPU's idle power once and gives it to the fp16 window: that call sleeps through
    no idle window of its own, and its dynamic energy is computed from the power it was given."""
    from qcheck.measure import timing

    a = torch.randn(2048, 2048, device="cuda")
    first = measure_energy(lambda: a @ a, device="cuda", window_s=1.0, idle_s=1.0)
    if not first.supported:
        pytest.skip(first.reason)
    sleeps = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: sleeps.append(s))
    second = measure_energy(lambda: a @ a, device="cuda", window_s=1.0, idle_s=1.0, idle_w=first.idle_power_w)
    assert sleeps == [] and second.supported and second.idle_power_w == first.idle_power_w
    expected = max(0.0, second.joules_per_call * second.calls - first.idle_power_w * second.window_s) / second.calls
    assert second.dynamic_joules_per_call == pytest.approx(expected)


def test_degenerate_tensors_and_placement(tiny):
    assert degenerate_tensors(tiny) == []
    zero = random_init_like(tiny_llama_config(), seed=0)
    torch.nn.init.zeros_(zero.model.layers[1].mlp.up_proj.weight)
    assert degenerate_tensors(zero) == ["model.layers.1.mlp.up_proj.weight"]
    assert degenerate_tensors({"x": torch.zeros(3, 4), "y": torch.ones(2)}) == ["x"]
    assert placement_problems(tiny, "cpu") == {}
    assert "model.embed_tokens.weight" in placement_problems(tiny, "cuda")


def test_forward_flops_counts_linear_weights(tiny):
    weights = sum(m.in_features * m.out_features for m in tiny.modules() if isinstance(m, torch.nn.Linear))
    assert forward_flops(tiny, 10) == 2 * weights * 10


# ----------------------------------------------------------------------------------------- ordering decisions

def test_order_skipped_off_gpu_without_tensor_cores_and_launch_bound():
    cpu = Timing(tuple(float(i) for i in range(1, 31)), (), "perf_counter_ns", "cpu", 1, "")
    r = assert_latency_order(cpu, cpu)
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "not-a-gpu"
    fast, slow = cuda_timing(31.0), cuda_timing(174.0, seed=1)
    r = assert_latency_order(fast, slow, device=gpu_info((6, 0), "Tesla P100-PCIE-16GB"))
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "no-tensor-cores"
    assert "no tensor cores" in r.message and "6.0" in r.message
    r = assert_latency_order(cuda_timing(21.5, 0.5, host=20.0), cuda_timing(56.9, 0.5, host=50.0, seed=2),
                             device=gpu_info())
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "launch-bound"


def test_order_pass_fail_inconclusive():
    info = gpu_info()
    r = assert_latency_order(cuda_timing(31.0), cuda_timing(174.0, seed=1), device=info)
    assert r.status == Status.PASS and r.evidence["speedup"] == pytest.approx(174 / 31, rel=0.02)
    with pytest.raises(InvariantViolation) as err:
        assert_latency_order(cuda_timing(200.0), cuda_timing(174.0, seed=1), device=info)
    assert "SLOWER" in err.value.result.message
    r = assert_latency_order(cuda_timing(100.0, 0.2, n=5), cuda_timing(101.0, 0.2, n=5, seed=1), device=info)
    assert r.status == Status.INCONCLUSIVE
    with pytest.raises(InvariantViolation) as err:
        assert_latency_order(cuda_timing(100.0, 0.2), cuda_timing(100.0, 0.2, seed=1), device=info)
    assert "not faster beyond noise" in err.value.result.message


def test_order_not_slower_mode():
    info = gpu_info()
    r = assert_latency_order(cuda_timing(36.8), cuda_timing(174.0, seed=1), faster_name="autocast", device=info,
                             mode="not-slower")
    assert r.status == Status.PASS
    with pytest.raises(InvariantViolation) as err:
        assert_latency_order(cuda_timing(7.6), cuda_timing(6.0, seed=1), faster_name="autocast", device=info,
                             mode="not-slower")
    assert "autocast is 1.27x SLOWER" in err.value.result.message


# ----------------------------------------------------------------------------------------- honesty, slowdown, speed

def test_variant_kind_from_real_reports(tiny):
    _, int8 = quantize(tiny, {"default": {"format": "int", "bits": 8}})
    assert variant_kind(tiny, int8).simulated and variant_kind(tiny, int8).bits == 8
    half, rep = quantize(tiny, {"dtype": "fp16", "default": {"format": "fp16"}})
    kind = variant_kind(half, rep)
    assert not kind.simulated and kind.bits == 16
    assert variant_kind(tiny) == VariantKind(False, 32, "unquantized, float32")
    assert variant_kind(tiny, autocast=True).bits == 16


def test_throughput_honest_marks_simulated_and_flags_flat_real_bits():
    kinds = {"fp32": VariantKind(False, 32, "fp32"), "fp16": VariantKind(False, 16, "cast"),
             "int8": VariantKind(True, 8, "fake-quantized (int): ...")}
    ok = assert_throughput_honest({"fp32": cuda_timing(174.0), "fp16": cuda_timing(31.0, seed=1),
                                   "int8": cuda_timing(174.5, seed=2)}, kinds)
    assert ok.status == Status.PASS and ok.evidence["claims"]["int8"]["speedup_vs_reference"] is None
    assert ok.evidence["claims"]["fp16"]["speedup_vs_reference"] == pytest.approx(174 / 31, rel=0.02)
    with pytest.raises(InvariantViolation) as err:
        assert_throughput_honest({"fp32": cuda_timing(50.0), "fp16": cuda_timing(50.5, seed=1)}, kinds)
    assert "flat across real bit widths" in err.value.result.message
    launch = assert_throughput_honest({"fp32": cuda_timing(50.0, host=49.0), "fp16": cuda_timing(50.5, seed=1)},
                                      kinds)
    assert launch.status == Status.PASS and "not asserted at a launch-bound shape" in launch.evidence["flat"]["note"]


def test_slowdown_bound_pass_known_cost_and_named_cause():
    ref = cuda_timing(34.3)
    assert assert_slowdown_bound(ref, cuda_timing(65.4, seed=1), variant="bnb-nf4").status == Status.PASS
    warn = assert_slowdown_bound(ref, cuda_timing(146.2, seed=1), variant="bnb-int8", backend_format="bnb-int8")
    assert warn.status == Status.WARN and "known cost" in warn.message
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, cuda_timing(343.0, seed=1), variant="w4",
                              causes={"cpu-placement": {"tensors": 3, "by_device": {"cpu": 3},
                                                        "examples": ["model.layers.1.mlp.up_proj.weight"]}})
    assert "CPU/device placement" in err.value.result.message and "9.97x slower" in err.value.result.message
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, cuda_timing(343.0, seed=1), variant="w4")
    assert "no placement problem" in err.value.result.message


def test_slowdown_over_the_bound_names_where_the_time_goes():
    """The kernel breakdown rides along when the bound is exceeded; torchao int4's tinygemm cost (measured on an
    H100 and an H200) is a known cost up to 12x, a WARN; past it, a FAIL that still names the kernel."""
    ref = cuda_timing(30.0)
    kernels = [{"kernel": "tinygemm_m16n8k16_chunk_kernel", "share": 0.91, "clock": "device", "ms": 210.0},
               {"kernel": "ampere_bf16_s16816gemm", "share": 0.05, "clock": "device", "ms": 11.0}]
    warn = assert_slowdown_bound(ref, cuda_timing(239.2, seed=1), variant="torchao-int4-wo-64",
                                 reference_name="bf16", backend_format="torchao-int4-wo", kernels=kernels)
    assert warn.status == Status.WARN and "tinygemm" in warn.message and "known cost" in warn.message
    assert "device time by kernel: tinygemm_m16n8k16_chunk_kernel 91%, ampere_bf16_s16816gemm 5%" in warn.message
    assert warn.evidence["time_by_kernel"][0]["ms"] == 210.0
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, cuda_timing(400.0, seed=1), variant="torchao-int4-wo-64", reference_name="bf16",
                              backend_format="torchao-int4-wo", kernels=kernels)
    message = err.value.result.message
    assert "x slower, over the 3x bound" in message and "tinygemm_m16n8k16_chunk_kernel 91%" in message
    assert "known cost" not in message
    assert "profile the variant" not in message
    passed = assert_slowdown_bound(ref, cuda_timing(31.0, seed=1), variant="int8", kernels=kernels)
    assert passed.status == Status.PASS and "time_by_kernel" not in passed.evidence


def test_time_by_kernel_on_cpu_ranks_real_operators(tiny):
    ids = torch.randint(0, tiny.config.vocab_size, (2, 32))
    with torch.no_grad():
        rows = time_by_kernel(profile_call(lambda: tiny(ids), "cpu"), "cpu", top=4)
    assert 1 <= len(rows) <= 4 and all(r["clock"] == "cpu" and r["calls"] >= 1 for r in rows)
    assert [r["share"] for r in rows] == sorted((r["share"] for r in rows), reverse=True)
    assert 0 < sum(r["share"] for r in rows) <= 1 + 1e-9
    assert all(r["kernel"].startswith("aten::") for r in rows), rows
    assert len({r["kernel"] for r in rows}) == len(rows)
    assert short_kernel_name("void at::native::(anonymous namespace)::tinygemm_m16n8k16_chunk_kernel<(at::native::"
                             "(anonymous namespace)::KReductionType)0, 256u>(int, int)") == "tinygemm_m16n8k16_chunk_kernel"
    assert short_kernel_name("aten::addmm") == "aten::addmm"


def test_rank_kernels_merges_template_instances_of_one_kernel():
    """Kernel names as the H200 profile of torchao int4 gave them: two elementwise instances are one kernel."""
    tinygemm = ("void at::native::tinygemm_m16n8k16_chunk_kernel<at::native::ALayout_RM<(at::native::KReductionType)"
                "0>, at::native::BLayout_TC_int4<8, 64>, 8, 8>(void const*, int)")
    rows = [(tinygemm, 28, 27735.0),
            ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN", 1, 1313.2),
            ("void at::native::elementwise_kernel<128, 4, at::native::direct_copy_kernel_cuda>(int)", 28, 828.6),
            ("void at::native::elementwise_kernel<128, 4, at::native::MulFunctor<float> >(int)", 25, 497.9)]
    ranked = rank_kernels(rows, clock="device", top=2)
    assert [r["kernel"] for r in ranked] == ["tinygemm_m16n8k16_chunk_kernel", "elementwise_kernel"]
    assert ranked[1]["calls"] == 53 and ranked[1]["ms"] == pytest.approx(1.3265)
    assert ranked[1]["name"].endswith("direct_copy_kernel_cuda>(int)")
    assert ranked[0]["share"] == pytest.approx(27735 / 30374.7)
    assert rank_kernels([], clock="cpu") == []


def test_plausible_speed_floor():
    with pytest.raises(InvariantViolation) as err:
        assert_plausible_speed(0.001, flops=2 * 134.5e6 * 512, device="cpu", what="one sample")
    assert "faster than the arithmetic allows" in err.value.result.message
    assert assert_plausible_speed(500.0, flops=2 * 134.5e6 * 512, device="cpu").status == Status.PASS


def test_placement_invariant_names_tensors(tiny):
    with pytest.raises(InvariantViolation) as err:
        assert_placement(tiny, "cuda")
    assert "on cpu" in err.value.result.message
    assert assert_placement(tiny, "cpu").status == Status.PASS


# ----------------------------------------------------------------------------------------- pytest-benchmark

def test_synchronized_timer_and_extra_info():
    a = synchronized_perf_counter()
    assert synchronized_perf_counter() >= a
    info = benchmark_extra_info("cpu", timing=Timing((1.0, 2.0), (), "perf_counter_ns", "cpu", 0, ""), dtype="fp32")
    assert info["qcheck_device"] == "cpu" and info["qcheck_median_ms"] == 1.5 and info["qcheck_dtype"] == "fp32"
    assert info["qcheck_timer"].endswith("synchronized_perf_counter")


def test_qcheck_benchmark_fixture_writes_qcheck_fields(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # else pytest-benchmark disables itself (`pytest -n 2`)
    pytester.makepyfile(test_b="""
        import torch
        from qcheck.benchmark_integration import qcheck_benchmark

        def test_mm(qcheck_benchmark):
            a = torch.randn(64, 64)
            qcheck_benchmark(lambda: a @ a, device="cpu", rounds=5, warmup_rounds=1, dtype="fp32")
            assert qcheck_benchmark.timing.n == 5
    """)
    result = pytester.runpytest("-p", "qcheck.benchmark_integration", "--benchmark-json=out.json", "-q")
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text())
    extra = data["benchmarks"][0]["extra_info"]
    assert extra["qcheck_device"] == "cpu" and extra["qcheck_regime"] == "cpu" and extra["qcheck_dtype"] == "fp32"
    assert data["benchmarks"][0]["stats"]["rounds"] == 5


@pytest.mark.gpu
def test_cuda_events_time_the_kernel_not_the_launch():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    t = measure(lambda: a @ a, device="cuda", warmup=3, min_repeats=20, min_time_s=0.2)
    assert t.method == "cuda-events" and t.median_ms > 0.05  # 137 GFLOP: >= ~0.14 ms at 989 TFLOP/s
    assert t.host_median_ms < t.median_ms
    g = measure(lambda: a @ a, device="cuda", warmup=3, min_repeats=20, min_time_s=0.2, graph=True)
    assert g.method == "cuda-graph" and abs(g.median_ms / t.median_ms - 1) < 0.2
    info = device_info("cuda")
    assert info.capability is not None and info.driver and "sm_clock_mhz" in info.clocks


def test_order_with_only_the_fast_side_launch_bound():
    info = gpu_info()
    fp32 = cuda_timing(174.0, 0.005, host=54.0, seed=1)  # compute-bound
    fp16 = cuda_timing(30.5, 0.01, host=26.2)  # the host sets fp16's time (86%)
    r = assert_latency_order(fp16, fp32, device=info)
    assert r.status == Status.PASS and "launch-bound, so its arithmetic is faster still" in r.message
    slow16 = cuda_timing(200.0, 0.01, host=190.0)
    r = assert_latency_order(slow16, fp32, device=info)
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "launch-bound"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_cast_copy_is_deepcopy_then_to_without_the_fp32_copy(dtype):
    """The reference's fp16/bf16 casts for the latency ordering are made tensor by tensor: the same tensors as
    `deepcopy(model).to(dtype)`, tied weights still tied, the reference untouched, and the same logits."""
    import copy

    from qcheck.measure.latency import cast_copy

    model = random_init_like(tiny_llama_config(), seed=0)
    want = copy.deepcopy(model).to(dtype)
    got = cast_copy(model, dtype)
    assert got.lm_head.weight is got.model.embed_tokens.weight
    assert got.lm_head.weight is not model.lm_head.weight
    for (name, a), (_, b) in zip(want.state_dict().items(), got.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for (name, a), (_, b) in zip(want.named_buffers(), got.named_buffers(), strict=True):  # non-persistent too
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.randint(1, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(want(ids).logits, got(ids).logits)


def test_a_bnb_4bit_layer_computes_in_its_weights_dtype_unless_the_plan_says():
    """bnb-nf4 of a bf16 model computed in fp32 (BnbSpec's old default), bitsandbytes' slow path: 5.9x a bf16
    reference on an H100 (session 24). Unset, the compute dtype is the weight's: fp32 in an fp32 model."""
    pytest.importorskip("bitsandbytes")
    from qcheck.quant.bnb import make_bnb_linear
    from qcheck.quant.spec import BnbSpec

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        layer = nn.Linear(64, 32, bias=False).to(dtype)
        assert make_bnb_linear(layer, BnbSpec("bnb-nf4")).compute_dtype == dtype
    assert make_bnb_linear(nn.Linear(64, 32).to(torch.bfloat16),
                           BnbSpec("bnb-nf4", compute_dtype="fp32")).compute_dtype == torch.float32
