"""The run's options, declared once: `qcheck run --X` and pytest's `--qcheck-X` are built from the same table, and
RunOptions (a frozen dataclass validated on construction) is what the engine and the suite read."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from qcheck.errors import ConfigError
from qcheck.inputs.placement import Placement, check_device_map, parse_max_memory

REFERENCE_DTYPES = ("fp32", "bf16", "fp16", "auto")
DECODINGS = ("auto", "generate", "graph")
"""--decoding: transformers' generate (dynamic cache), qcheck.measure.decode's static cache replayed as a CUDA graph, or
auto: the graph on a CUDA device (the same greedy tokens, 1.2-2.3x faster on an H100: RESULTS.md session 11), generate
elsewhere (a CPU gains nothing from it)."""
CHAT_TEMPLATES = ("auto", "on", "off")
"""--chat-template: render the generation prompts with the tokenizer's chat template when it has one (auto), always
(on), or never (off: plain "Question: ...\\nAnswer:" text, as a base model is prompted, ending at the next
"Question:")."""

PTQ_ENV = "QCHECK_PTQ"
"""Comma-separated PTQ specs added to every run (the same as repeating --ptq)."""


@dataclass(frozen=True)
class Option:
    """One option: its RunOptions field, its `qcheck run` flag, and argparse/pytest keyword arguments."""

    field: str
    flag: str
    kwargs: dict[str, Any]
    pytest_flag: str | None = None

    @property
    def pytest_name(self) -> str:
        return self.pytest_flag or "--qcheck-" + self.flag.removeprefix("--")


OPTIONS: tuple[Option, ...] = (
    Option("model", "--model", {"default": None, "metavar": "SRC",
                                "help": "model: HF folder or .gguf file (default: the embedded SmolLM2-135M)"}),
    Option("plans", "--plan", {"action": "append", "default": [], "metavar": "FILE",
                               "help": "plan TOML file to add as a variant (repeat)"}),
    Option("variants", "--variants", {"default": None, "metavar": "A,B",
                                      "help": "comma-separated built-in variants (default: all); 'none' for only "
                                              "--plan/--ptq variants"}),
    Option("ptq", "--ptq", {"action": "append", "default": [], "metavar": "SPEC",
                            "help": "PTQ backend variant to add (repeat): bnb-config:nf4, torchao:int8-wo, "
                                    f"gptq[:SOURCE], awq, w8a8-sq, checkpoint=FOLDER (also ${PTQ_ENV})"}),
    Option("device", "--device", {"default": "auto", "choices": ("auto", "cpu", "cuda"),
                                  "help": "device (default auto: cuda when available)"}),
    Option("device_map", "--device-map", {"default": None, "metavar": "MAP",
                                          "help": "place the reference and each variant with accelerate's big-model "
                                                  "loading: auto, balanced, balanced_low_0, sequential (spread over "
                                                  "the GPUs, then CPU, then disk), or one device (cpu, cuda:N); "
                                                  "default: the whole model on --device"}),
    Option("max_memory", "--max-memory", {"default": None, "metavar": "DEV=SIZE,...",
                                          "help": "memory each model may take per device with --device-map, e.g. "
                                                  "0=20GiB,cpu=64GiB; what does not fit is offloaded to CPU, then "
                                                  "disk (default: half of each device's free memory, as the "
                                                  "reference and one variant are alive at once)"}),
    Option("offload_folder", "--offload-folder", {"default": None, "metavar": "DIR",
                                                  "help": "where disk-offloaded weights are written with --device-map "
                                                          "(default: a temporary folder per model, removed after)"}),
    Option("reference_dtype", "--reference-dtype", {"default": "fp32", "choices": ("fp32", "bf16", "fp16", "auto"),
                                                    "help": "dtype the reference is loaded in, and the one plans "
                                                            "that do not cast the model compute in (auto: the "
                                                            "checkpoint's own torch_dtype; default fp32)"}),
    Option("cpu_half_matmul", "--cpu-half-matmul", {"default": "fast", "choices": ("fast", "native"),
                                                    "help": "fp16/bf16 matrix products on a CPU: fast = an fp32 GEMM "
                                                            "of the 16-bit values rounded once to 16 bits (the same "
                                                            "fp32 accumulation as torch's half GEMMs, 4-6x faster on "
                                                            "CPUs without AVX512-FP16/AMX); native = torch's own CPU "
                                                            "kernels. Timings always run torch's own (default fast)"}),
    Option("decoding", "--decoding", {"default": "auto", "choices": DECODINGS,
                                      "help": "greedy decoding for the generation checks: generate = transformers' "
                                              "generate with its dynamic cache; graph = a static cache and one CUDA "
                                              "graph replayed per step (generate where a model cannot take that "
                                              "path; the record says which ran); auto (default) = graph on a CUDA "
                                              "device, generate elsewhere"}),
    Option("samples", "--samples", {"type": int, "default": 50, "metavar": "N",
                                    "help": "questions/prompts per task slice (default 50)"}),
    Option("prompts", "--prompts", {"type": int, "default": None, "metavar": "N",
                                    "help": "generation prompts (GSM8K) per variant, when fewer than --samples are "
                                            "wanted (generation costs far more per sample than scoring)"}),
    Option("prompt", "--prompt", {"default": None, "metavar": "NAME|FILE.json",
                                  "help": "few-shot prompt of the generation checks: a packaged one (gsm8k_3shot, "
                                          "gsm8k_3shot_direct) or a JSON file {name, system, instruction, shots, "
                                          "stop} (default: gsm8k_3shot on a GPU, gsm8k_3shot_direct on a CPU)"}),
    Option("chat_template", "--chat-template", {"default": "auto", "choices": CHAT_TEMPLATES,
                                                "help": "render the generation prompts with the tokenizer's chat "
                                                        "template: auto (default: when it has one), on, or off "
                                                        "(plain Question/Answer text, as for a base model; a "
                                                        "continuation then ends at the next 'Question:')"}),
    Option("new_tokens", "--new-tokens", {"type": int, "default": None, "metavar": "N",
                                          "help": "greedy generation budget per GSM8K prompt (default 256 on a GPU, "
                                                  "24 on a CPU); raise it for models that reason at length before "
                                                  "\\boxed{}"}),
    Option("tokens", "--tokens", {"type": int, "default": 4096, "metavar": "N",
                                  "help": "evaluation tokens for perplexity and fidelity (default 4096)"}),
    Option("context", "--context", {"type": int, "default": 1024, "metavar": "N",
                                    "help": "perplexity context length (default 1024; at most the positions the model takes)"}),
    Option("text", "--text", {"default": None, "metavar": "FILE",
                              "help": "evaluation text file (default: WikiText-2 test)"}),
    Option("data_slice", "--slice", {"type": int, "default": 0, "metavar": "K",
                                     "help": "use the K-th slice of every data set (text tokens, ARC-Easy questions, "
                                             "GSM8K problems), for trying checks on data they were not tuned on "
                                             "(default 0: the first)"}),
    Option("workers", "--workers", {"type": int, "default": 1, "metavar": "N",
                                    "help": "measure the variants in N worker processes (0: one per visible GPU, "
                                            "else 1); workers that share a device (more than the GPUs, or on a CPU) "
                                            "leave the timings to the parent, taken afterwards with the device alone "
                                            "(sharing one GPU was not faster: CUDA time-slices between processes); "
                                            "the checks judge all the records once"}),
    Option("lm_eval_results", "--lm-eval-results", {"action": "append", "default": [], "metavar": "[VARIANT=]FILE",
                                                    "help": "an lm-evaluation-harness results JSON of one of the "
                                                            "run's variants (fp32 when VARIANT= is left out), "
                                                            "checked against what qcheck measured (repeat)"}),
    Option("optuna_objective", "--optuna-objective", {"default": None, "metavar": "MODULE:FUNCTION",
                                                      "help": "an Optuna objective to audit"}),
    Option("optuna_storage", "--optuna-storage", {"default": None, "metavar": "URL",
                                                  "help": "Optuna storage URL of a study to audit"}),
    Option("optuna_study", "--optuna-study", {"default": None, "metavar": "NAME",
                                              "help": "name of the stored Optuna study to audit"}),
)


@dataclass(frozen=True)
class RunOptions:
    """The options of one run; invalid values raise ConfigError naming the flag and what to pass."""

    model: str | None = None
    plans: tuple[str, ...] = ()
    variants: tuple[str, ...] | None = None
    ptq: tuple[str, ...] = ()
    device: str = "auto"
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    reference_dtype: str = "fp32"
    cpu_half_matmul: str = "fast"
    decoding: str = "auto"
    samples: int = 50
    prompts: int | None = None
    new_tokens: int | None = None
    prompt: str | None = None
    chat_template: str = "auto"
    tokens: int = 4096
    context: int = 1024
    text: str | None = None
    data_slice: int = 0
    workers: int = 1
    lm_eval_results: tuple[str, ...] = ()
    optuna_objective: str | None = None
    optuna_storage: str | None = None
    optuna_study: str | None = None
    report_dir: str | None = None
    records: str | None = None

    def __post_init__(self) -> None:
        for name, flag, low in (("samples", "--samples", 1), ("tokens", "--tokens", 2), ("context", "--context", 2),
                                ("data_slice", "--slice", 0), ("workers", "--workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}", field=flag)
        for name, flag in (("prompts", "--prompts"), ("new_tokens", "--new-tokens")):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}", field=flag)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda, got {self.device!r}", field="--device")
        if self.cpu_half_matmul not in ("fast", "native"):
            raise ConfigError(f"--cpu-half-matmul must be fast or native, got {self.cpu_half_matmul!r}",
                              field="--cpu-half-matmul")
        if self.decoding not in DECODINGS:
            raise ConfigError(f"--decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}",
                              field="--decoding")
        if self.chat_template not in CHAT_TEMPLATES:
            raise ConfigError(f"--chat-template must be one of {', '.join(CHAT_TEMPLATES)}, got "
                              f"{self.chat_template!r}", field="--chat-template")
        if self.reference_dtype not in REFERENCE_DTYPES:
            raise ConfigError(f"--reference-dtype must be one of {', '.join(REFERENCE_DTYPES)}, got "
                              f"{self.reference_dtype!r}", field="--reference-dtype")
        self.placement()
        if self.variants is not None:
            for name in self.variants:
                if not name or name != name.strip():
                    raise ConfigError(f"--variants has an empty or padded name: {self.variants!r}", field="--variants")

    def placement(self) -> Placement | None:
        """The --device-map / --max-memory / --offload-folder request, validated (None: the whole model on --device)."""
        if self.device_map is None:
            for flag, value in (("--max-memory", self.max_memory), ("--offload-folder", self.offload_folder)):
                if value is not None:
                    raise ConfigError(f"{flag} applies to a --device-map placement: add --device-map auto (or "
                                      "balanced, sequential)", field=flag)
            return None
        device_map = check_device_map(self.device_map)
        max_memory = parse_max_memory(self.max_memory) if self.max_memory is not None else ()
        placement = Placement(device_map, max_memory, self.offload_folder)
        if max_memory and not placement.spreads:
            raise ConfigError(f"--max-memory needs a strategy that spreads the model (auto, balanced, sequential), "
                              f"not --device-map {device_map}", field="--max-memory")
        if self.device == "cpu" and (placement.gpu_budget() or device_map.startswith("cuda")
                                     or device_map.isdigit()):
            raise ConfigError(f"--device cpu with a GPU placement (--device-map {device_map}"
                              f"{', --max-memory ' + self.max_memory if self.max_memory else ''}): drop --device cpu "
                              "or place on cpu only", field="--device-map")
        if self.workers != 1:
            raise ConfigError("--device-map spreads one model over the devices and --workers spreads the variants "
                              "over them: use one of the two (--workers 1 with --device-map)", field="--workers")
        return placement

    @property
    def n_prompts(self) -> int:
        """Generation prompts per variant (--prompts, else --samples)."""
        return self.samples if self.prompts is None else self.prompts

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunOptions:
        """From parsed flag values keyed by field name (argparse namespace or pytest options)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in values.items() if k in known}
        variants = kw.get("variants")
        if isinstance(variants, str):
            kw["variants"] = () if variants.strip() == "none" else tuple(
                v.strip() for v in variants.split(",") if v.strip())
        kw["plans"] = tuple(kw.get("plans") or ())
        kw["lm_eval_results"] = tuple(kw.get("lm_eval_results") or ())
        kw["ptq"] = tuple(dict.fromkeys([*(kw.get("ptq") or ()), *ptq_specs_from_env()]))
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def pytest_args(self) -> list[str]:
        """The same options as pytest arguments (for `qcheck run`, which runs the suite through pytest)."""
        args: list[str] = []
        for opt in OPTIONS:
            value = getattr(self, opt.field)
            if opt.field == "variants":
                if value is not None:
                    args.append(f"{opt.pytest_name}={','.join(value) if value else 'none'}")
            elif opt.field == "ptq":
                args += [f"{opt.pytest_name}={v}" for v in value if v not in ptq_specs_from_env()]
            elif isinstance(value, tuple):
                args += [f"{opt.pytest_name}={v}" for v in value]
            elif value is not None and value != opt.kwargs.get("default"):
                args.append(f"{opt.pytest_name}={value}")
        return args


def ptq_specs_from_env() -> list[str]:
    """PTQ specs from $QCHECK_PTQ (comma-separated)."""
    return [s.strip() for s in os.environ.get(PTQ_ENV, "").split(",") if s.strip()]


def add_arguments(parser: Any, *, pytest: bool = False) -> None:
    """Declare every option on an argparse parser (`qcheck run`) or a pytest option group (`--qcheck-*`)."""
    for opt in OPTIONS:
        kwargs = dict(opt.kwargs)
        if pytest:
            parser.addoption(opt.pytest_name, dest=f"qcheck_{opt.field}", **kwargs)
        else:
            parser.add_argument(opt.flag, dest=opt.field, **kwargs)


def in_pytest_words(message: str) -> str:
    """An error message naming `qcheck run` flags, with each flag given as pytest spells it (--context ->
    --qcheck-context): the same checks refuse the same input under either front end."""
    import re

    for option in sorted(OPTIONS, key=lambda o: -len(o.flag)):
        message = re.sub(rf"(?<![\w-]){re.escape(option.flag)}(?![\w-])", option.pytest_name, message)
    return message


def from_pytest_config(config: Any) -> RunOptions:
    """The RunOptions of a pytest run (its --qcheck-* options)."""
    values = {opt.field: config.getoption(f"qcheck_{opt.field}") for opt in OPTIONS}
    values["report_dir"] = config.getoption("qcheck_report_dir", None)
    values["records"] = config.getoption("qcheck_records", None)
    return RunOptions.from_values(values)
