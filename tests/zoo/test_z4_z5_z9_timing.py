"""Z4, Z5, Z9, Z12 (seeds 000, 001, 002, 004): timing bugs planted and caught by name.

Planted: timing that includes warm-up/compilation (CPU), timing on zeros (CPU), a model partly on another device
(CPU: the meta device; GPU: layers computing on the CPU), a home-made 4-bit layer that unpacks its weights on
every call (CPU: seed 002's 10x slower PTQ; the slowdown check names the unpacking ops), timing without
synchronize (GPU), a mock evaluation
faster than the arithmetic allows (CPU), simulated formats measured faster than fp32 (CPU), identical throughput
across bit widths from a fake fp16 labeled real (GPU), the latency ordering asserted where it cannot hold
(CPU: no tensor cores; GPU: launch-bound), a placement with layers offloaded to disk timed as the variants' speed
(CPU; session 13's 1.2B run with CPU offload FAILed `throughput_honest` on an H100 that way), a fake-quant
dequantize per call beside bitsandbytes' own kernels (recorded kernel names of a bf16 run on an H100, session 24:
the backend's own path is a WARN within its known cost, the extra dequantize a FAIL). Each correct version passes.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from qcheck.errors import InvariantViolation
from qcheck.formats import integer
from qcheck.inputs.models import random_init_like, tiny_llama_config
from qcheck.invariants.latency import (
    CPU_TIMING_WARNING,
    assert_latency_order,
    assert_placement,
    assert_plausible_speed,
    assert_slowdown_bound,
    assert_throughput_honest,
    audit_timing,
)
from qcheck.measure.latency import VariantKind, diagnose_slowdown, profile_call, time_by_kernel, variant_kind
from qcheck.measure.timing import DeviceInfo, forward_callable, forward_flops, measure, random_input_ids, time_forward
from qcheck.quant.apply import quantize
from qcheck.results import Status


class LazyQuantMLP(nn.Module):
    """Autotunes its 4-bit group size on the first call (tries four, keeps the most accurate) and caches the
    weights: a one-time cost like compilation or kernel autotuning that a naive timer counts."""

    def __init__(self, width: int = 1024, depth: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth))
        self._cache: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cache is None:
            self._cache = []
            for layer in self.layers:
                w = layer.weight.detach()
                tries = [integer(w, bits=4, group_size=g) for g in (32, 64, 128, 256)]
                self._cache.append(min(tries, key=lambda q: float((q - w).pow(2).sum())))
        for w in self._cache:
            x = torch.relu(x @ w.T)
        return x


def naive_timer(fn, calls: int = 8) -> list[float]:
    """The planted harness: perf_counter around every call from the very first, no warm-up, no synchronize."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


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


# ------------------------------------------------------------------------------------------- CPU

def test_timing_including_warmup_is_caught():
    model = LazyQuantMLP()
    x = torch.randn(64, 1024)
    fn = lambda: model(x)
    samples = naive_timer(fn)
    with pytest.raises(InvariantViolation) as err:
        audit_timing(fn, device="cpu", samples_ms=samples)
    result = err.value.result
    assert result.name == "timing_audit" and result.evidence["problems"] == ["warmup-included"]
    assert "[warmup-included] the first timed call took" in result.message
    ours = measure(fn, device="cpu", warmup=3, min_repeats=10, min_time_s=0.1)
    ok = audit_timing(fn, device="cpu", samples_ms=ours.samples_ms)
    # an honest timing PASSes; on a machine whose speed moves during the audit (the other xdist worker), the
    # ratio is not judged (the test below)
    assert ok.status == Status.PASS or (ok.status == Status.INCONCLUSIVE and "speed moved" in ok.message), ok.message


def _slows_down_after(calls: int, fast_s: float, slow_s: float):
    """A workload on a machine that slows down after `calls` calls (another process starts): what a shared CPU
    did to an honest timing in session 28's fresh-clone test run."""
    import time

    count = [0]

    def fn():
        count[0] += 1
        time.sleep(fast_s if count[0] <= calls else slow_s)

    return fn


def test_an_honest_timing_on_a_machine_that_slowed_down_is_no_finding():
    """Session 28: under pytest-xdist the honest half of the test above FAILed as "warm-up included": the user's
    samples (median 14.9 ms) were taken after the other worker started, qcheck's own (6.7-7.0 ms, then 15.2-15.7 ms)
    straddled the change, and their median made the ratio 1.6x. A figure within the range of qcheck's own samples
    cannot be told from the machine's movement: INCONCLUSIVE, saying so. The same figure against a steady machine
    still FAILs."""
    reported = [28.5] * 10  # taken once the machine had slowed down, as the user's were
    moved = audit_timing(_slows_down_after(3 + 10, 0.001, 0.030), device="cpu", samples_ms=reported,
                         min_repeats=20, min_time_s=0)
    assert moved.status == Status.INCONCLUSIVE and "speed moved during the audit" in moved.message, moved.message
    assert moved.evidence["reported_over_qcheck"] > 1.5 and moved.evidence["problems"] == []
    with pytest.raises(InvariantViolation) as err:
        audit_timing(_slows_down_after(10**6, 0.001, 0.030), device="cpu", samples_ms=reported, min_repeats=20,
                     min_time_s=0)
    assert err.value.result.evidence["problems"] == ["warmup-included"]


def test_timing_on_zeros_is_caught(tiny):
    zero_model = copy.deepcopy(tiny)
    for p in zero_model.parameters():
        nn.init.zeros_(p)
    zero_ids = torch.zeros(2, 16, dtype=torch.long)
    with pytest.raises(InvariantViolation) as err:
        audit_timing(forward_callable(zero_model, zero_ids), device="cpu", inputs={"input_ids": zero_ids},
                     model=zero_model, min_repeats=3, min_time_s=0)
    result = err.value.result
    assert result.evidence["problems"] == ["zeros"] and "[zeros] timing on zeros" in result.message
    assert "input_ids" in result.evidence["zero_tensors"]
    assert "model.layers.0.mlp.up_proj.weight" in result.evidence["zero_tensors"]
    ids = random_input_ids(512, 2, 16)
    ok = audit_timing(forward_callable(tiny, ids), device="cpu", inputs={"input_ids": ids}, model=tiny,
                      min_repeats=3, min_time_s=0)
    assert ok.status == Status.PASS


def test_model_partly_on_another_device_is_caught(tiny):
    partly = copy.deepcopy(tiny)
    partly.model.layers[1].to("meta")
    with pytest.raises(InvariantViolation) as err:
        assert_placement(partly, "cpu", variant="w4g64")
    result = err.value.result
    assert result.name == "device_placement" and "on meta" in result.message
    assert "model.layers.1.self_attn.q_proj.weight" in result.evidence["misplaced"]
    assert "model.layers.0.self_attn.q_proj.weight" not in result.evidence["misplaced"]
    causes = diagnose_slowdown(partly, device="cpu")
    assert causes["cpu-placement"]["by_device"] == {"meta": len(result.evidence["misplaced"])}
    with pytest.raises(InvariantViolation) as err:
        assert_placement(tiny, "cuda")  # the run times on cuda; the model never moved
    assert "on cpu" in err.value.result.message
    assert assert_placement(tiny, "cpu").status == Status.PASS


class HomeMadeInt4Linear(nn.Module):
    """Seed 002's home-made 4-bit layer (its GPTQ w4g64 model ran ~10x slower than the base): int4 codes (groups of
    64, absmax scales) packed two to a byte, dequantized as GPTQ's plain-torch fallback does, each column's scale
    gathered through `g_idx`. The planted bug dequantizes on every call; the correct version does it once and keeps
    the float weight. (Session 28: without the gather, the bug was 2.9-8x slower on this CPU, too near the 3x bound
    for a test: one idle run in four, and a run under pytest-xdist, PASSed it. With it, 9.5-16x idle, and beside
    another process's matmuls, never less than 4x.)"""

    def __init__(self, linear: nn.Linear, *, unpack_once: bool, group: int = 64) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        groups = linear.weight.detach().reshape(out_f, in_f // group, group)
        scale = groups.abs().amax(-1, keepdim=True) / 7
        codes = (torch.clamp(torch.round(groups / scale), -8, 7) + 8).to(torch.uint8).reshape(out_f, in_f)
        self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))
        self.register_buffer("scales", scale.reshape(out_f, -1))
        self.register_buffer("g_idx", torch.arange(in_f) // group)
        self.bias = linear.bias
        self.unpacked = self.unpack() if unpack_once else None

    def unpack(self) -> torch.Tensor:
        low, high = (self.packed & 0xF).float(), (self.packed >> 4).float()
        codes = torch.stack((low, high), -1).reshape(self.packed.shape[0], -1)
        return (codes - 8) * self.scales[:, self.g_idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.unpacked if self.unpacked is not None else self.unpack(), self.bias)


def _slowdown_of_home_made_int4(unpack_once: bool):
    torch.manual_seed(0)
    reference = nn.Sequential(*(nn.Linear(1024, 1024) for _ in range(4))).eval()
    variant = nn.Sequential(*(HomeMadeInt4Linear(m, unpack_once=unpack_once) for m in reference)).eval()
    x = torch.randn(1, 4, 1024)
    budget = {"warmup": 2, "min_repeats": 15, "min_time_s": 0.2}
    with torch.no_grad():
        ref, timing = (measure(lambda m=m: m(x), device="cpu", **budget) for m in (reference, variant))
        profile = profile_call(lambda: variant(x), "cpu")
    return assert_slowdown_bound(ref, timing, variant="home-made-w4", reference_name="fp32",
                                 causes=diagnose_slowdown(variant, device="cpu", profile=profile),
                                 kernels=time_by_kernel(profile, "cpu"))


def test_weights_unpacked_on_every_call_are_caught_and_the_unpacking_named():
    with pytest.raises(InvariantViolation) as err:
        _slowdown_of_home_made_int4(unpack_once=False)
    result = err.value.result
    assert result.name == "slowdown_bound" and "over the 3x bound" in result.message
    top = result.evidence["time_by_kernel"][0]["kernel"]
    assert top not in ("aten::addmm", "aten::mm", "aten::linear"), result.evidence["time_by_kernel"]
    assert f"cpu time by kernel: {top}" in result.message
    assert _slowdown_of_home_made_int4(unpack_once=True).status == Status.PASS


def _smollm2_meta():
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def test_mock_evaluation_is_implausibly_fast(tiny):
    smollm2 = _smollm2_meta()
    cached = torch.randn(1, 512, 8)
    mock = measure(lambda: cached, device="cpu", warmup=1, min_repeats=20, min_time_s=0)  # seed 004: "mock"
    with pytest.raises(InvariantViolation) as err:
        assert_plausible_speed(mock, flops=forward_flops(smollm2, 512), device="cpu", what="one 512-token sample")
    result = err.value.result
    assert result.name == "plausible_speed" and "faster than the arithmetic allows" in result.message
    assert result.evidence["floor_ms"] > 100 * mock.median_ms
    ids = random_input_ids(512, 2, 32)
    real = measure(forward_callable(tiny, ids), device="cpu", warmup=1, min_repeats=5, min_time_s=0)
    assert assert_plausible_speed(real, flops=forward_flops(tiny, ids.numel()), device="cpu").status == Status.PASS


def test_simulated_format_measured_faster_is_caught(tiny):
    int8, report = quantize(tiny, {"default": {"format": "int", "bits": 8}})
    kinds = {"fp32": variant_kind(tiny), "int8": variant_kind(int8, report)}
    assert kinds["int8"].simulated
    big, small = random_input_ids(512, 8, 256, seed=1), random_input_ids(512, 1, 4, seed=2)
    budget = {"warmup": 2, "min_repeats": 10, "min_time_s": 0.1}
    # planted: the harness timed the reference on one batch and the variant on another
    planted = {"fp32": time_forward(tiny, big, **budget), "int8": time_forward(int8, small, **budget)}
    with pytest.raises(InvariantViolation) as err:
        assert_throughput_honest(planted, kinds, simulated_tolerance=0.25, fail_on_cpu=True)
    assert "int8 is simulated" in err.value.result.message and "measurement is broken" in err.value.result.message
    warned = assert_throughput_honest(planted, kinds, simulated_tolerance=0.25)
    assert warned.status == Status.WARN and warned.message.endswith(CPU_TIMING_WARNING)
    # the CPU tolerance the suite uses (2x: copies of one model spread up to 1.42x on a 2-core CPU) still sees it
    from qcheck.suite.test_latency import CPU_SIMULATED_TOLERANCE

    ratio = planted["fp32"].median_ms / planted["int8"].median_ms
    assert ratio > 1 + CPU_SIMULATED_TOLERANCE
    assert assert_throughput_honest(planted, kinds, simulated_tolerance=CPU_SIMULATED_TOLERANCE).status == Status.WARN
    fair = {"fp32": time_forward(tiny, big, **budget), "int8": time_forward(int8, big, **budget)}
    ok = assert_throughput_honest(fair, kinds, simulated_tolerance=CPU_SIMULATED_TOLERANCE)
    assert ok.status in (Status.PASS, Status.WARN)  # WARN only if this shared CPU was loaded mid-measurement
    assert ok.evidence["claims"]["int8"]["speedup_vs_reference"] is None


def test_ordering_not_asserted_without_tensor_cores(tiny):
    ids = random_input_ids(512, 2, 32)
    budget = {"warmup": 1, "min_repeats": 10, "min_time_s": 0}
    fp32 = time_forward(tiny, ids, **budget)
    autocast = time_forward(tiny, ids, autocast=torch.bfloat16, **budget)
    p100 = DeviceInfo("cuda:0", "Tesla P100-PCIE-16GB", (6, 0), False, "470.57", "11.4", torch.__version__, 56, 16.0)
    r = assert_latency_order(autocast, fp32, faster_name="autocast", device=p100, mode="not-slower")
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "no-tensor-cores"
    assert "Tesla P100-PCIE-16GB (compute capability 6.0) has no tensor cores" in r.message
    r = assert_latency_order(autocast, fp32, faster_name="autocast", mode="not-slower")
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "not-a-gpu"


# ------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_timing_without_synchronize_is_caught():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    fn = lambda: a @ a
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        fn()
    unsynced = (time.perf_counter() - t0) * 100  # ms per call, read before the GPU finished
    torch.cuda.synchronize()
    with pytest.raises(InvariantViolation) as err:
        audit_timing(fn, device="cuda", reported_ms=unsynced, inputs=[a], flops=2 * 8192**3)
    result = err.value.result
    assert "unsynchronized" in result.evidence["problems"]
    assert "[unsynchronized] timing without synchronize" in result.message
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    synced = (time.perf_counter() - t0) * 100
    assert audit_timing(fn, device="cuda", reported_ms=synced, inputs=[a], flops=2 * 8192**3).status == Status.PASS


class CpuFallbackMLP(nn.Module):
    """Planted: an MLP left on the CPU inside a GPU model; activations go to the host and back every call."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp.to("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.to("cpu")).to(x.device)


@pytest.mark.gpu
def test_model_partly_on_cpu_is_caught_on_gpu():
    cfg = tiny_llama_config(hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8,
                            num_key_value_heads=4, vocab_size=8192)
    model = random_init_like(cfg, seed=0, device="cuda")
    partly = copy.deepcopy(model)
    for i in (2, 3):
        partly.model.layers[i].mlp = CpuFallbackMLP(partly.model.layers[i].mlp)
    ids = random_input_ids(cfg.vocab_size, 8, 256, device="cuda")
    budget = {"warmup": 2, "min_repeats": 20, "min_time_s": 0.3}
    ref = time_forward(model, ids, label="fp32", **budget)
    slow = time_forward(partly, ids, label="partly-cpu", **budget)
    causes = diagnose_slowdown(partly, forward_callable(partly, ids), device="cuda")
    assert "cpu-placement" in causes and "host-device-copies" in causes
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, slow, variant="partly-cpu", reference_name="fp32", causes=causes)
    assert "CPU/device placement" in err.value.result.message
    assert "model.layers.2.mlp.mlp.gate_proj.weight" in err.value.result.message
    with pytest.raises(InvariantViolation) as err:
        audit_timing(forward_callable(partly, ids), device="cuda", model=partly, min_repeats=3, min_time_s=0)
    assert err.value.result.evidence["problems"] == ["placement"]
    assert assert_slowdown_bound(ref, time_forward(model, ids, **budget), variant="fp32-again").status == Status.PASS


@pytest.mark.gpu
def test_flat_throughput_across_bits_is_caught():
    cfg = tiny_llama_config(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=16,
                            num_key_value_heads=4, vocab_size=16384, max_position_embeddings=1024)
    fp32 = random_init_like(cfg, seed=0, device="cuda")
    fake16, report = quantize(fp32, {"default": {"format": "minifloat", "exp_bits": 5, "man_bits": 10}})
    ids = random_input_ids(cfg.vocab_size, 32, 512, device="cuda")
    budget = {"warmup": 3, "min_repeats": 20, "min_time_s": 0.5}
    timings = {"fp32": time_forward(fp32, ids, **budget), "fp16": time_forward(fake16, ids, **budget)}
    claimed = {"fp32": variant_kind(fp32), "fp16": VariantKind(False, 16, "labeled fp16 (seed 000)")}
    with pytest.raises(InvariantViolation) as err:
        assert_throughput_honest(timings, claimed)
    assert "flat across real bit widths" in err.value.result.message
    honest = {"fp32": variant_kind(fp32), "fp16": variant_kind(fake16, report)}
    ok = assert_throughput_honest(timings, honest)
    assert ok.status == Status.PASS and ok.evidence["claims"]["fp16"]["simulated"] is True
    half = copy.deepcopy(fp32).half()
    timings["real-fp16"] = time_forward(half, ids, **budget)
    order = assert_latency_order(timings["real-fp16"], timings["fp32"], device="cuda")
    assert order.status == Status.PASS, order.message


@pytest.mark.gpu
def test_ordering_skipped_at_launch_bound_shape():
    model = random_init_like(tiny_llama_config(), seed=0, device="cuda")
    half = copy.deepcopy(model).half()
    ids = random_input_ids(512, 1, 8, device="cuda")
    budget = {"warmup": 3, "min_repeats": 20, "min_time_s": 0.2}
    r = assert_latency_order(time_forward(half, ids, **budget), time_forward(model, ids, **budget), device="cuda")
    assert r.status == Status.SKIPPED and r.evidence["skip"] == "launch-bound"
    assert "launch-bound" in r.message


def _timing_checks(pytester, folder, out, *extra):
    """`throughput_honest` and `plausible_speed` of a real suite run on `folder` (CPU), from its JSON report."""
    import json

    result = pytester.runpytest_inprocess(
        "--pyargs", "qcheck.suite", "-p", "no:cacheprovider", f"--qcheck-model={folder}", "--qcheck-variants=int8",
        "--qcheck-device=cpu", f"--qcheck-report={out}", "-k", "latency_plausible or throughput_honest", *extra)
    assert result.ret in (0, 1), result.stdout.str()[-3000:]
    report = json.loads((out / "qcheck-report.json").read_text())
    return [c for c in report["checks"] if c["name"] in ("plausible_speed", "throughput_honest")], report


def test_an_offloaded_placement_is_not_timed_as_the_variants_speed(pytester, tmp_path, tiny_folder):
    """Planted: layers offloaded to disk by --device-map/--max-memory, so every forward streams weights from the host.
    Its timing is the transfer's, and judging it as the variants' speed gave a FAIL on an honest run: the timing
    checks skip, naming the offload, and no latency is recorded. Correct: the same model on one device is timed and
    judged."""
    offloaded, report = _timing_checks(pytester, tiny_folder, tmp_path / "offload", "--qcheck-device-map=auto",
                                       "--qcheck-max-memory=cpu=1MB", f"--qcheck-offload-folder={tmp_path / 'off'}")
    assert report["meta"]["placement"]["offloaded"]
    assert offloaded and all(c["status"] == "SKIPPED" for c in offloaded), offloaded
    assert all("offloaded to the CPU or disk" in (c.get("message") or "") for c in offloaded), offloaded
    latency = [r for r in report["records"]["records"] if r["measurement"] == "latency"]
    assert latency and all(r["status"] == "skipped" for r in latency)
    plain, report = _timing_checks(pytester, tiny_folder, tmp_path / "plain")
    assert not report["meta"]["placement"]["offloaded"]
    # judged on its timings: PASS, or on this CPU a finding from timings a busy machine disturbs, which the check
    # reports as a warning by design (a reference timed while the other pytest worker ran, int8 while it did not, read
    # as "int8 measured faster" in one fresh-clone run here)
    assert all(c["status"] == "PASS" or (c["status"] == "WARN" and c["message"].endswith(CPU_TIMING_WARNING))
               for c in plain), plain
    assert [r["status"] for r in report["records"]["records"] if r["measurement"] == "latency"] == ["ok", "ok"]
    # the skipped checks keep the ids the judged run gives them, so the two reports compare check by check (the
    # offloaded run of session 14 reported `latency_plausible[int8]` SKIPPED beside the plain run's `plausible_speed`)
    ids = sorted((c["name"], c.get("variant")) for c in plain)
    assert ids == sorted((c["name"], c.get("variant")) for c in offloaded) == [
        ("plausible_speed", "int8"), ("throughput_honest", None)]


def _recorded(center: float, seed: int = 0):
    """30 event-timed samples within 1% of `center` ms (a recorded distribution, for the decision logic)."""
    import random

    from qcheck.measure.timing import Timing

    rng = random.Random(seed)
    samples = tuple(center * (1 + rng.uniform(-0.01, 0.01)) for _ in range(30))
    return Timing(samples, (center * 5,), "cuda-events", "cuda:0", 30 * center / 1000, "test")


def test_bitsandbytes_own_kernels_are_its_normal_path_not_a_fallback():
    """Kernel names from bf16 1.2B runs on an H100 (sessions 24 and 25): LLM.int8's and NF4's dequantize kernels,
    LLM.int8's outlier reads and its one scalar upload per layer are the backend's own path. Counted as a 'dequantize fallback', they turned bnb-int8's
    5.4x against a bf16 reference (its known cost: up to 6x) into a FAIL; a fake-quant hook's dequantize stays."""
    from qcheck.measure.latency import backend_own_ops

    deq = {"bitsandbytes::int8_mm_dequant": 112, "void kdequant_mm_int32_fp16<4, 512>(int*, float*)": 112,
           "void kDequantizeBlockwise<float, 512, 64, 8, 0>(float*, unsigned char*)": 112,
           "aten::dequantize_per_channel": 5}
    copies = {"Memcpy DtoH (Device -> Pageable)": 241, "Memcpy HtoD (Pageable -> Device)": 3}
    own = backend_own_ops(copies, deq, bnb=True, outlier_reads=True)
    assert set(own) == {"bitsandbytes::int8_mm_dequant", "void kdequant_mm_int32_fp16<4, 512>(int*, float*)",
                        "void kDequantizeBlockwise<float, 512, 64, 8, 0>(float*, unsigned char*)",
                        "Memcpy DtoH (Device -> Pageable)"}
    assert deq == {"aten::dequantize_per_channel": 5} and copies == {"Memcpy HtoD (Pageable -> Device)": 3}
    deq2, copies2 = {"bitsandbytes::int8_mm_dequant": 1}, {"Memcpy DtoH (Device -> Pageable)": 9}
    assert backend_own_ops(copies2, deq2, bnb=False, outlier_reads=False) == {}  # no bitsandbytes layer: all stay
    assert deq2 and copies2
    # session 25's run after the compute-dtype change (1.2B, 16 layers x 7 int8 projections = 112 per forward):
    # bitsandbytes' own `out_row[:, outlier_cols] = 0` uploads its scalar once per layer; one upload more than
    # the layers is something else moving data per call
    uploads = {"Memcpy DtoH (Device -> Pinned)": 129, "Memcpy HtoD (Pageable -> Device)": 112}
    assert backend_own_ops(dict(uploads), {}, bnb=True, outlier_reads=True, int8_layers=112) == uploads
    extra = {"Memcpy HtoD (Pageable -> Device)": 113}
    assert backend_own_ops(extra, {}, bnb=True, outlier_reads=True, int8_layers=112) == {}
    assert extra == {"Memcpy HtoD (Pageable -> Device)": 113}
    ref = _recorded(8.7)
    warn = assert_slowdown_bound(ref, _recorded(46.8, seed=1), variant="bnb-int8", reference_name="bf16",
                                 backend_format="bnb-int8", causes={"backend-own-ops": own})
    assert warn.status == Status.WARN and "known cost" in warn.message and "its normal path" in warn.message
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, _recorded(46.8, seed=1), variant="bnb-int8", backend_format="bnb-int8",
                              causes={"backend-own-ops": own, "dequantize-per-call": deq})
    assert "dequantize fallback: 5 dequantize ops" in err.value.result.message
    assert "normal path" not in err.value.result.message



# session 26's bf16 1.2B run on an H100 (e2ebf16 at 5ab94cc): the event-timed samples of the bf16 reference and of
# bnb-int8, whose own host-bound steps (one outlier read per layer) spread in two modes, ~50 ms and ~75-97 ms
BF16_1_2B_MS = (
    10.999, 11.173, 18.33, 11.221, 10.885, 17.864, 11.57, 10.962, 13.888, 14.231, 10.922, 10.643, 11.449,
    11.049, 11.377, 10.6, 10.403, 10.251, 11.404, 11.411, 10.77, 11.181, 11.241, 11.065, 11.659, 11.981, 16.283,
    14.042, 11.074, 13.266, 14.894, 11.172, 11.14, 11.422, 12.258, 10.771, 10.878, 11.073, 11.012, 10.776,
    11.232, 14.88, 13.332, 10.197, 10.542, 13.692, 13.643, 10.569, 10.665, 13.112, 14.592, 11.712, 10.616,
    10.596, 10.953, 11.176, 10.649, 10.879, 10.468, 10.846, 10.848, 10.506, 10.965, 10.521, 10.215, 11.538,
    10.979, 10.742, 11.019, 12.016, 10.523, 10.827, 10.534, 10.465, 10.164, 10.735, 11.565, 10.692, 10.468,
    10.768, 10.965, 10.666, 11.204, 11.127, 11.311, 13.71,
)
BNB_INT8_1_2B_MS = (
    50.876, 50.211, 66.448, 94.86, 96.092, 76.833, 50.266, 76.793, 82.129, 51.007, 85.68, 74.525, 51.184,
    50.862, 50.868, 88.648, 97.086, 97.536, 54.557, 48.981,
)


def test_a_host_bound_backend_is_judged_against_its_known_cost_beyond_noise():
    """bnb-int8's median was 6.39x the bf16 reference's, over LLM.int8's known 6x, and the check FAILed an honest
    run whose slowdown the diagnosis found to be the backend's own kernels and reads alone. The known cost is now
    judged as the bound is, by the one-sided test: these samples are not beyond 6x (p=0.60), a WARN. Tight samples
    at 10x, or a fallback beside the own path, still FAIL."""
    from qcheck.measure.timing import Timing

    def timing(samples):
        return Timing(tuple(samples), (samples[0],), "cuda-events", "cuda:0", sum(samples) / 1000, "test")

    own = {"Memcpy DtoH (Device -> Pinned)": 129, "Memcpy HtoD (Pageable -> Device)": 112,
           "bitsandbytes::int8_mm_dequant": 112}
    ref, int8 = timing(BF16_1_2B_MS), timing(BNB_INT8_1_2B_MS)
    warn = assert_slowdown_bound(ref, int8, variant="bnb-int8", reference_name="bf16", backend_format="bnb-int8",
                                 causes={"backend-own-ops": own})
    assert warn.status == Status.WARN and "6.39x, not beyond it at p=0.6" in warn.message
    assert warn.evidence["known_cost"]["p_over_known"] > 0.5
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, _recorded(110.0, seed=2), variant="bnb-int8", reference_name="bf16",
                              backend_format="bnb-int8", causes={"backend-own-ops": own})
    assert "no placement problem" in err.value.result.message and "known cost" not in err.value.result.message
    with pytest.raises(InvariantViolation) as err:
        assert_slowdown_bound(ref, int8, variant="bnb-int8", reference_name="bf16", backend_format="bnb-int8",
                              causes={"backend-own-ops": own, "dequantize-per-call": {"aten::dequantize_per_channel": 5}})
    assert "dequantize fallback" in err.value.result.message
