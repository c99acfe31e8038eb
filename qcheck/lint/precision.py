"""What a row's config label says about it: reference, half precision, mixed, quantized or pruned; its bits."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

REFERENCE, HALF, MIXED, QUANTIZED, PRUNED, OTHER = "reference", "half", "mixed", "quantized", "pruned", "other"
COMPRESSED_KINDS = frozenset({HALF, MIXED, QUANTIZED, PRUNED})

_MIXED = re.compile(r"mixed|autocast|(^|[^a-z])amp([^a-z]|$)|hybrid")
_QUANT = re.compile(r"gptq|awq|smoothquant|aqlm|vptq|quanto|eetq|fbgemm|marlin|codebook|(^|[^a-z])(qat|ptq|qlora|bnb|"
                    r"rtn|hqq|int\d+\w*|uint\d|w\d+a\d+|w\d+(g\d+)?|nf4|fp4|fp6|fp8|nvfp4|float8\w*|i?q\d_|"
                    r"\d+[-_ ]?bits?|\d+(\.\d+)?[-_ ]?bpw|mxfp\d|fixed|exl2|gguf|ggml|llm\.int8)([^a-z]|$)|"
                    r"quantized|quantised")
_PRUNE = re.compile(r"prun|sparse|(^|[^a-z])(l1|magnitude)([^a-z]|$)")
_HALF = re.compile(r"(^|[^a-z])(fp16|bf16|float16|bfloat16|half|f16)([^a-z0-9]|$)")
_REFERENCE = re.compile(r"(^|[^a-z])(fp32|float32|f32|full|baseline|base|noquant|unquantized|dense|none|original|"
                        r"reference|ref|uncompressed)([^a-z0-9]|$)")
_BITS_PATTERNS = (
    re.compile(r"(^|[^a-z0-9.])(\d{1,2}(?:\.\d+)?)[-_ ]?(?:bits?|bpw)([^a-z]|$)"),
    re.compile(r"(^|[^a-z])(?:fp|bf|int|uint|float|f|w|nf|nvfp|mxfp)(\d{1,2})(?![0-9])"),
    re.compile(r"(^|[^a-z])i?q(\d)_"),
)


@dataclass(frozen=True)
class RowKind:
    """A row's role in a precision comparison and its bit width (NaN when unknown)."""

    kind: str
    bits: float


@lru_cache(maxsize=65536)
def bits_from_text(text: str) -> float:
    """Bit width named in a label ('FP32' -> 32, 'w4g64' -> 4, '16-bit' -> 16, 'Mixed' -> NaN)."""
    lowered = text.lower()
    for pattern in _BITS_PATTERNS:
        match = pattern.search(lowered)
        if match:
            value = float(match.groups()[1])
            if 1 <= value <= 64:
                return float(value)
    if _HALF.search(lowered):
        return 16.0
    return math.nan


_FULL_PRECISION = re.compile(r"(^|[^a-z])(fp32|float32|f32|tf32)([^a-z0-9]|$)")


@lru_cache(maxsize=4096)
def names_precision(text: str) -> bool:
    """True when `text` names a number format or quantization method (FP16, int4, gptq-int4, Q4_0, W8A8, mixed);
    plain words that only sound like a reference ('base', 'full') or metric names ('f1') do not count."""
    lowered = text.lower()
    return bool(_QUANT.search(lowered) or _HALF.search(lowered) or _FULL_PRECISION.search(lowered)
                or _MIXED.search(lowered))


@lru_cache(maxsize=65536)
def classify(text: str, bits: float = math.nan, sparsity: float = math.nan) -> RowKind:
    """Classify a row from its label text, its bits cell and its sparsity cell."""
    lowered = text.lower()
    named_bits = bits_from_text(text)
    width = bits if not math.isnan(bits) else named_bits
    if _MIXED.search(lowered):
        return RowKind(MIXED, math.nan if math.isnan(bits) else bits)
    if not math.isnan(sparsity) and sparsity > 0 or _PRUNE.search(lowered) and sparsity != 0:
        return RowKind(PRUNED, width)
    if _QUANT.search(lowered):
        return RowKind(QUANTIZED, width)
    if _HALF.search(lowered):
        return RowKind(HALF, width)
    if _REFERENCE.search(lowered) or sparsity == 0:
        return RowKind(REFERENCE, width)
    if not math.isnan(width):
        return RowKind(REFERENCE if width >= 32 else QUANTIZED, width)
    return RowKind(OTHER, width)
