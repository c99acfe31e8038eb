"""The per-layer manifest `quantize` returns: what each layer actually got, measured on its weights."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from qcheck.results import to_jsonable


@dataclass
class LayerRecord:
    """One layer: the rule that claimed it, the spec applied (or why kept), and measurements of the change."""

    name: str
    module_class: str
    rule: str
    format: str
    spec: dict[str, Any]
    applied: bool
    kept_reason: str = ""
    dtype: str = ""
    bits: int | None = None
    numel: int = 0
    max_distinct_per_group: int | None = None
    rel_change: float = 0.0
    sqnr_db: float | None = None
    saturation_rate: float = 0.0
    underflow_rate: float = 0.0
    sparsity: float | None = None
    requested_sparsity: float | None = None
    activations: dict[str, Any] | None = None
    backend: str = "qcheck"
    shared_with: str | None = None
    transform: str | None = None
    """An output-preserving rescaling applied before quantization (SmoothQuant / AWQ smoothing): the layer's
    weights then differ from the reference's by more than quantization, so weight SQNR is not its measure."""


@dataclass
class QuantReport:
    """What `quantize` did: plan, per-layer records, and fingerprints of the reference before and after."""

    plan: dict[str, Any]
    layers: list[LayerRecord] = field(default_factory=list)
    backend: str = "qcheck"
    reference_fingerprint: str = ""
    model_dtype: str = "fp32"
    outside_linear: dict[str, int] = field(default_factory=dict)
    """Weight elements the plan's layer rules cannot reach, by module class and parameter: float matrices outside
    nn.Linear and the fused experts weights plans address (`qcheck.quant.experts`). A quantizing plan leaves them as
    they are, so at most 10% may be (a MoE router's share; more is refused before quantizing,
    `plan.MAX_UNADDRESSED_SHARE`); a whole-model dtype cast changes them too, at any share (experts of a layout qcheck
    does not know)."""
    weight_elements: int = 0
    """Weight elements outside the embeddings and the output head (what `outside_linear`'s share is of)."""

    def layer(self, name: str) -> LayerRecord:
        for rec in self.layers:
            if rec.name == name:
                return rec
        raise KeyError(f"no layer {name!r} in the manifest")

    @property
    def applied(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.applied]

    def summary(self) -> dict[str, Any]:
        """Counts per format and bits, kept layers with reasons, and the mean relative weight change."""
        applied = self.applied
        return {
            "plan": self.plan.get("name"),
            "layers": len(self.layers),
            "applied": len(applied),
            "kept": len(self.layers) - len(applied),
            "formats": dict(Counter(r.format for r in self.layers)),
            "bits": {str(k): v for k, v in Counter(r.bits for r in applied).items()},
            "kept_reasons": dict(Counter(r.kept_reason for r in self.layers if not r.applied)),
            "mean_rel_change": (sum(r.rel_change for r in applied) / len(applied)) if applied else 0.0,
            "model_dtype": self.model_dtype,
            "outside_linear_share": (sum(self.outside_linear.values()) / self.weight_elements
                                     if self.weight_elements else 0.0),
        }

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"plan": self.plan, "backend": self.backend, "model_dtype": self.model_dtype,
                            "reference_fingerprint": self.reference_fingerprint, "summary": self.summary(),
                            "outside_linear": self.outside_linear,
                            "layers": [asdict(r) for r in self.layers]})
