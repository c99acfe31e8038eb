"""Number formats as pure tensor -> tensor functions (no modules, no state)."""
from qcheck.formats.casts import CAST_DTYPES, bf16, fp16
from qcheck.formats.fixed_point import FixedPointRange, fixed_point, fixed_point_range
from qcheck.formats.integer import check_group_size, integer, integer_params
from qcheck.formats.minifloat import (
    FP8_E4M3,
    FP8_E5M2,
    PRESETS,
    MinifloatFormat,
    fp8_e4m3,
    fp8_e5m2,
    minifloat,
    minifloat_format,
    quantize_minifloat,
)

__all__ = [
    "CAST_DTYPES",
    "FP8_E4M3",
    "FP8_E5M2",
    "PRESETS",
    "FixedPointRange",
    "MinifloatFormat",
    "bf16",
    "check_group_size",
    "fixed_point",
    "fixed_point_range",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp16",
    "integer",
    "integer_params",
    "minifloat",
    "minifloat_format",
    "quantize_minifloat",
]
