"""Number-format throughput on a 4096x4096 fp32 tensor (CPU; GPU when available, synchronized).

Run: pytest benchmarks/bench_formats.py --benchmark-only --benchmark-columns=median,iqr,rounds
"""
import pytest
import torch

from qcheck.formats import fixed_point, fp8_e4m3, integer, minifloat

SIZE = 4096
FORMATS = {
    "fixed8.4": lambda x: fixed_point(x, 8, 4),
    "fixed16.8": lambda x: fixed_point(x, 16, 8),
    "int8-channel": lambda x: integer(x, 8),
    "int4-g64": lambda x: integer(x, 4, group_size=64),
    "int4-g64-asym": lambda x: integer(x, 4, group_size=64, symmetric=False),
    "minifloat-e4m3": fp8_e4m3,
    "minifloat-e5m2-ieee": lambda x: minifloat(x, 5, 2),
    "cast-bf16": lambda x: x.to(torch.bfloat16),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=DEVICES)
def tensor(request):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(SIZE, SIZE, generator=gen).to(request.param)


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_throughput(benchmark, tensor, name):
    fn = FORMATS[name]
    sync = torch.cuda.synchronize if tensor.is_cuda else (lambda: None)

    def run():
        out = fn(tensor)
        sync()
        return out

    out = benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update({"device": str(tensor.device), "numel": tensor.numel(),
                                 "gb_per_s_read_write": 2 * tensor.numel() * 4 / seconds / 1e9,
                                 "threads": torch.get_num_threads()})
    assert out.shape == tensor.shape and out.dtype in (torch.float32, torch.bfloat16)
