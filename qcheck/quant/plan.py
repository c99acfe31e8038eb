"""Plans: layer-name globs -> specs, with a default and ordered overrides (first match wins).

Loaded from TOML text/files or dicts in the schema of DESIGN.md. `Plan.resolve(model)` assigns every target
layer its rule; an override that matches no layer is an error naming its glob and the nearest layer names. An
override's `match` is one glob or a list of them (a layer matches when any does): one plan then names the same role
in several architectures' layer names (`self_attn` in Llama, `attn` in GPT-2, `self_attention` in Falcon).
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcheck.errors import ConfigError
from qcheck.quant.experts import ExpertMatrix, expert_matrices, is_expert_weight
from qcheck.quant.spec import ACTIVATION_FORMATS, CastSpec, KeepSpec, Spec, spec_from_dict, spec_to_dict

TOP_LEVEL_KEYS = ("name", "dtype", "default", "override", "include_lm_head", "include_embeddings", "description")
MODEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Rule:
    """One plan entry: a glob or a tuple of globs (None for the default), the weight spec and an optional
    activation spec."""

    match: str | tuple[str, ...] | None
    spec: Spec
    activations: Spec | None = None
    index: int | None = None

    @property
    def globs(self) -> tuple[str, ...]:
        """The rule's globs (none for the default)."""
        return () if self.match is None else (self.match,) if isinstance(self.match, str) else self.match

    def claims(self, layer: str) -> bool:
        """Whether one of the rule's globs matches `layer` (the default claims every layer)."""
        return self.match is None or any(fnmatch.fnmatchcase(layer, g) for g in self.globs)

    @property
    def label(self) -> str:
        shown = self.match if isinstance(self.match, str) else list(self.globs)
        return "default" if self.match is None else f"override[{self.index}] {shown!r}"


@dataclass(frozen=True)
class Assignment:
    """The rule that claimed a layer, or the reason it is left alone."""

    layer: str
    rule: Rule
    kind: str


@dataclass(frozen=True)
class Plan:
    """A quantization plan. `dtype` casts the whole model first (a real dtype change); rules then apply."""

    default: Rule
    overrides: tuple[Rule, ...] = ()
    name: str = "plan"
    dtype: str = "fp32"
    include_lm_head: bool = False
    include_embeddings: bool = False
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, str) or self.dtype not in MODEL_DTYPES:  # a list would raise TypeError
            raise ConfigError(f"dtype must be one of {list(MODEL_DTYPES)}, got {self.dtype!r}", field="dtype")
        for key in ("include_lm_head", "include_embeddings"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}", field=key)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str | None = None) -> Plan:
        """Build a plan from a dict with the TOML schema's keys."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a plan must be a table/dict, got {type(data).__name__}", field="plan")
        unknown = sorted(set(map(str, data)) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise ConfigError(f"plan: unknown key {unknown[0]!r}; allowed top-level keys: {list(TOP_LEVEL_KEYS)}",
                              field=unknown[0])
        if "default" not in data:
            raise ConfigError("plan: missing [default] table (the spec for every layer no override matches); "
                              "use format = \"keep\" to leave unmatched layers alone", field="default")
        default = _rule(data["default"], None, None)
        raw_overrides = data.get("override", [])
        if isinstance(raw_overrides, Mapping):
            raw_overrides = [raw_overrides]
        if not isinstance(raw_overrides, (list, tuple)):
            raise ConfigError("plan: 'override' must be a list of tables ([[override]] in TOML)", field="override")
        overrides = tuple(_rule(entry, entry.get("match") if isinstance(entry, Mapping) else None, i)
                          for i, entry in enumerate(raw_overrides))
        plan_name = data.get("name", name or "plan")
        if not isinstance(plan_name, str) or not plan_name.strip():
            raise ConfigError(f"plan: name must be a non-empty string, got {plan_name!r}", field="name")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise ConfigError("plan: description must be a string", field="description")
        return cls(default=default, overrides=overrides, name=plan_name, dtype=data.get("dtype", "fp32"),
                   include_lm_head=data.get("include_lm_head", False),
                   include_embeddings=data.get("include_embeddings", False), description=description,
                   source=dict(data))

    @classmethod
    def from_toml(cls, text: str, name: str | None = None) -> Plan:
        """Parse TOML text in the plan schema."""
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"plan is not valid TOML: {exc}", field="toml") from None
        return cls.from_dict(data, name=name)

    @classmethod
    def load(cls, source: Plan | Mapping[str, Any] | str | Path) -> Plan:
        """Accept a Plan, a dict, or a path to a .toml file."""
        if isinstance(source, Plan):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"plan file not found: {path} (give a TOML file in the plan schema, see README)",
                              field="plan")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read plan file {path}: {exc}", field="plan") from None
        try:
            return cls.from_toml(text, name=path.stem)
        except ConfigError as exc:
            raise ConfigError(f"plan file {path}: {exc}", field=exc.field, layer=exc.layer) from None

    def _refuse_unaddressable(self, model: nn.Module, head: nn.Module | None) -> None:
        """A quantizing plan on a model whose weights mostly sit outside nn.Linear (GPT-2's Conv1D, fused MoE
        experts of an unknown class) would leave them as they were under the format's name: refused, naming where
        they sit."""
        if self.dtype != "fp32" and all(isinstance(r.spec, (KeepSpec, CastSpec)) for r in self.rules):
            return  # the plan casts the whole model's dtype, inside nn.Linear or not
        total, outside = unaddressable_weights(model, head)
        share = sum(outside.values()) / total if total else 1.0
        if share <= MAX_UNADDRESSED_SHARE:
            return
        ranked = sorted(outside.items(), key=lambda kv: -kv[1])[:3]
        where = ", ".join(f"{name} ({n:,} elements)" for name, n in ranked) or "no weight matrix at all"
        raise ConfigError(f"plan {self.name!r}: {share:.1%} of the model's weight elements (outside its embeddings "
                          f"and output head) sit outside nn.Linear layers and the fused experts qcheck knows, where no "
                          f"plan can address them: {where}. A variant built from this plan would leave them as they are "
                          f"under the format's name (at most {MAX_UNADDRESSED_SHARE:.0%} may be). qcheck's plans address "
                          f"nn.Linear layers, as torchao's quantize_ does by default, and transformers' fused experts; "
                          f"{_unaddressable_hint(dict(ranked))}", field="model")

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.overrides + (self.default,)

    @property
    def uses_bitsandbytes(self) -> bool:
        """Whether any rule stores layers with bitsandbytes (its storage is its own, and its kernels host-bound)."""
        from qcheck.quant.spec import BnbSpec

        return any(isinstance(rule.spec, BnbSpec) for rule in self.rules)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "include_lm_head": self.include_lm_head,
                               "include_embeddings": self.include_embeddings,
                               "default": _rule_dict(self.default)}
        if self.description:
            out["description"] = self.description
        if self.overrides:
            out["override"] = [{"match": r.match if isinstance(r.match, str) else list(r.globs), **_rule_dict(r)}
                               for r in self.overrides]
        return out

    def resolve(self, model: nn.Module) -> list[Assignment]:
        """Assign each target layer (nn.Linear; embeddings / lm_head where included) its rule, in module order."""
        targets = target_layers(model, self.include_embeddings)
        head = output_embeddings(model)
        self._refuse_unaddressable(model, head)
        names = [n for n, _ in targets]
        for rule in self.overrides:
            if not any(rule.claims(n) for n in names):
                raise ConfigError(
                    f"plan {self.name!r}: {rule.label} matches no layer; nearest layer names: "
                    f"{nearest_names(rule.globs[0], names)}", field="match")
        out: list[Assignment] = []
        for layer, module in targets:
            rule = next((r for r in self.overrides if r.claims(layer)), self.default)
            if head is not None and module is head and not self.include_lm_head and rule.match is None:
                rule = Rule(None, KeepSpec("lm_head excluded (include_lm_head = false)"))
            kind = "embedding" if isinstance(module, nn.Embedding) else "linear"
            if isinstance(module, ExpertMatrix):
                kind = "experts"
                _check_experts_rule(rule, layer, MODEL_DTYPES[self.dtype])
            if isinstance(module, (nn.Linear, ExpertMatrix)) and not isinstance(rule.spec, KeepSpec):
                rule.spec.validate_for(module.in_features, layer)
            out.append(Assignment(layer, rule, kind))
        return out


def _check_experts_rule(rule: Rule, layer: str, model_dtype: torch.dtype) -> None:
    """What a fused experts weight cannot take: its experts run on intermediate states no hook sees (activations),
    and its module computes in one dtype, which a cast of one of its weights to another than the model's would
    break (the fp16 and bf16 plans cast the whole model and claim every layer with the same cast: allowed)."""
    if rule.activations is not None:
        raise ConfigError(f"layer {layer} (fused mixture-of-experts weights, claimed by {rule.label}): activation "
                          "quantization cannot reach the experts' inputs inside their module; add an override for "
                          "the experts (e.g. match = \"*.experts.*\") without activations", field="activations",
                          layer=layer)
    if isinstance(rule.spec, CastSpec) and rule.spec.dtype != model_dtype:
        raise ConfigError(f"layer {layer} (fused mixture-of-experts weights, claimed by {rule.label}): a cast of one "
                          "experts weight would leave its module computing in two dtypes; cast the whole model "
                          "(dtype = \"fp16\" or \"bf16\" in the plan) or give the experts a grid format",
                          field="format", layer=layer)


def _rule(table: Any, match: Any, index: int | None) -> Rule:
    where = "[default]" if index is None else f"override[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"plan: {where} must be a table, got {type(table).__name__}", field=where)
    if index is not None:
        globs = [match] if isinstance(match, str) else list(match) if isinstance(match, (list, tuple)) else None
        if not globs or not all(isinstance(g, str) and g.strip() for g in globs):
            raise ConfigError(f"plan: {where} needs a non-empty 'match': a glob (e.g. \"model.layers.*.mlp.*\") or a "
                              f"list of globs (e.g. [\"*.self_attn.*\", \"*.attn.*\"]), got {match!r}", field="match")
        match = match if isinstance(match, str) else tuple(globs)
    if index is None and "match" in table:
        raise ConfigError("plan: [default] takes no 'match' (it applies to every layer no override matches)",
                          field="match")
    acts = table.get("activations")
    act_spec = None
    if acts is not None:
        act_spec = spec_from_dict(acts, where=f"{where}.activations")
        if getattr(act_spec, "format", None) not in ACTIVATION_FORMATS and act_spec.format != "minifloat":
            raise ConfigError(f"plan: {where}.activations: format {act_spec.format!r} cannot fake-quantize "
                              f"activations; use one of {ACTIVATION_FORMATS}", field="activations")
    spec = spec_from_dict(table, where=where, allow_extra=("match", "activations"))
    return Rule(match if index is not None else None, spec, act_spec, index)


def _rule_dict(rule: Rule) -> dict[str, Any]:
    data = spec_to_dict(rule.spec)
    if rule.activations is not None:
        data["activations"] = spec_to_dict(rule.activations)
    return data


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """The model's lm_head (transformers' get_output_embeddings), or None; looked up once per plan, not per layer
    (a walk over every module per layer was quadratic: 2 s of validation at 135M)."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def target_layers(model: nn.Module, include_embeddings: bool = False) -> list[tuple[str, nn.Module | ExpertMatrix]]:
    """The layers a plan can address, in module order: every nn.Linear (bitsandbytes modules subclass it), each fused
    mixture-of-experts weight (`qcheck.quant.experts`) and, optionally, nn.Embedding."""
    kinds: tuple[type, ...] = (nn.Linear, nn.Embedding) if include_embeddings else (nn.Linear,)
    out: list[tuple[str, nn.Module | ExpertMatrix]] = []
    for n, m in model.named_modules():
        if isinstance(m, kinds) and n:
            out.append((n, m))
        else:
            out.extend(expert_matrices(n, m))
    return out


MAX_UNADDRESSED_SHARE = 0.10
"""Largest share of a model's weight elements (outside its embeddings and output head) a quantizing plan may leave
unaddressable because they sit outside nn.Linear and the fused experts qcheck addresses. A dense transformer has none
there; a MoE router holds well under 1%. A variant named w4g64 that leaves more as it was is not w4g64 (GPT-2's
Conv1D: 100%; fused experts of a class qcheck does not know: ~97% of Mixtral-8x7B), and its figures would be reported
as the format's."""


def unaddressable_weights(model: nn.Module, head: nn.Module | None) -> tuple[int, dict[str, int]]:
    """The weight elements outside the embeddings and the output head (parameters of two or more dimensions, each
    once), and of them the float ones held outside nn.Linear and the fused experts weights plans address, by module
    class and parameter name. Integer storage counts as addressed: a quantized model's packed weights (bitsandbytes'
    int8 and uint8 inside its nn.Linear subclasses) are what a plan made of them."""
    seen: set[int] = set()
    total, outside = 0, {}
    for module in model.modules():
        if module is head or isinstance(module, nn.Embedding):
            seen.update(id(p) for p in module.parameters(recurse=False))
            continue
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen or param.dim() < 2:
                continue
            seen.add(id(param))
            total += param.numel()
            if not isinstance(module, nn.Linear) and param.is_floating_point() and not is_expert_weight(module, param):
                key = f"{type(module).__module__}.{type(module).__qualname__}.{pname}"
                outside[key] = outside.get(key, 0) + param.numel()
    return total, outside


def _unaddressable_hint(outside: Mapping[str, int]) -> str:
    names = " ".join(outside)
    if "Conv1D" in names:
        return ("transformers' Conv1D (GPT-2's) holds the transposed weight of a linear layer: convert those layers to "
                "nn.Linear, save the model, and pass that folder")
    if "Experts" in names or "expert" in names.lower():
        return ("these are fused mixture-of-experts tensors of a class qcheck does not know the layout of (it "
                "addresses those transformers' use_experts_implementation marks with num_experts and is_transposed); "
                "the fp16 and bf16 casts change them, so --variants fp16,bf16 still runs")
    return "no plan can quantize them; the fp16 and bf16 casts change the whole model (--variants fp16,bf16)"


def nearest_names(glob: str | None, names: list[str], k: int = 3) -> list[str]:
    """Layer names closest to a glob that matched nothing (its wildcards read as layer indices)."""
    probe = re.sub(r"\*+", "0", glob or "")
    close = difflib.get_close_matches(probe, names, n=k, cutoff=0.0)
    return close or names[:k]
