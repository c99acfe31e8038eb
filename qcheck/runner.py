"""`qcheck run`: validate the inputs, then run the shipped suite through pytest and write the reports.

Inputs are checked before anything runs (model source, plan files, plan globs against the model), so bad
input exits 2 with a clear message and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from qcheck.errors import ConfigError, QCheckError


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="HF model folder or .gguf file (default: embedded SmolLM2)")
    parser.add_argument("--plan", action="append", default=[], help="plan TOML file to add as a variant (repeat)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated built-in variants (default: all); 'none' for only --plan")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default="reports", help="report folder (default: reports)")
    parser.add_argument("--samples", type=int, default=50, help="questions/prompts per task slice")
    parser.add_argument("--prompts", type=int, default=None,
                        help="generation prompts (GSM8K) per variant, if fewer than --samples (default: --samples)")
    parser.add_argument("--tokens", type=int, default=4096, help="evaluation tokens for perplexity")
    parser.add_argument("--context", type=int, default=1024, help="perplexity context length")
    parser.add_argument("--text", default=None, help="evaluation text file (default: WikiText-2 test)")
    parser.add_argument("--optuna-objective", default=None, help="MODULE:FUNCTION of an Optuna objective to audit")
    parser.add_argument("--optuna-storage", default=None, help="Optuna storage URL of a study to audit")
    parser.add_argument("--optuna-study", default=None, help="name of the stored Optuna study to audit")
    parser.add_argument("-k", dest="keyword", default=None, help="only run suite checks matching this expression")
    parser.add_argument("--ptq", action="append", default=[], metavar="SPEC",
                        help="PTQ backend variant to add (repeat): bnb-config:nf4, torchao:int8-wo, gptq[:SOURCE], "
                             "awq, w8a8-sq, checkpoint=FOLDER")
    parser.add_argument("--pytest-arg", action="append", default=[], help="extra argument passed to pytest")


def _validate(args: argparse.Namespace) -> None:
    from qcheck.inputs.models import load_model, resolve_source
    from qcheck.quant.plan import Plan
    from qcheck.variants import DEFAULT_VARIANTS, VariantSet

    for name, value in (("--samples", args.samples), ("--tokens", args.tokens), ("--context", args.context),
                        ("--prompts", args.samples if args.prompts is None else args.prompts)):
        if value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value}", field=name)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise QCheckError("--device cuda was asked for, but no CUDA device is available (use --device cpu)")
    if args.text is not None and not Path(args.text).is_file():
        raise QCheckError(f"--text {args.text}: file not found")
    for path in args.plan:
        Plan.load(path)
    resolve_source(args.model)
    names = list(DEFAULT_VARIANTS) if args.variants is None else (
        [] if args.variants.strip() == "none" else [v.strip() for v in args.variants.split(",") if v.strip()])
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    loaded = load_model(args.model, device=device, cache=True)
    VariantSet.from_names(loaded.model, names, args.plan, ptq_specs=args.ptq).validate()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _plugin_installed() -> bool:
    """Whether pytest will load qcheck's plugin by its entry point (not so when run from an uninstalled source tree)."""
    from importlib.metadata import entry_points

    return any(ep.value == "qcheck.pytest_plugin" for ep in entry_points(group="pytest11"))


def cli_main(args: argparse.Namespace) -> int:
    import pytest

    _validate(args)
    out = Path(args.out)
    argv = ["--pyargs", "qcheck.suite", "-p", "no:cacheprovider", "-q", "-rfEs",
            f"--qcheck-report={out}", f"--qcheck-device={args.device}", f"--qcheck-samples={args.samples}",
            *([f"--qcheck-prompts={args.prompts}"] if args.prompts is not None else []),
            f"--qcheck-tokens={args.tokens}", f"--qcheck-context={args.context}",
            "-o", "addopts=", "-o", "testpaths=", "-W", "ignore::DeprecationWarning"]
    if args.model:
        argv.append(f"--qcheck-model={args.model}")
    for plan in args.plan:
        argv.append(f"--qcheck-plan={plan}")
    if args.variants is not None:
        argv.append(f"--qcheck-variants={args.variants}")
    for spec in args.ptq:
        argv.append(f"--qcheck-ptq={spec}")
    if args.text:
        argv.append(f"--qcheck-text={args.text}")
    for key in ("objective", "storage", "study"):
        value = getattr(args, f"optuna_{key}")
        if value:
            argv.append(f"--qcheck-optuna-{key}={value}")
    if args.keyword:
        argv += ["-k", args.keyword]
    if not _plugin_installed():
        argv += ["-p", "qcheck.pytest_plugin"]
    argv += args.pytest_arg
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    code = int(pytest.main(argv))
    report_path = out / "qcheck-report.json"
    if code in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.NO_TESTS_COLLECTED):
        raise QCheckError(f"pytest could not run the suite (exit {code}); see its message above")
    if not report_path.is_file():
        raise QCheckError(f"the run wrote no report at {report_path}")
    status = json.loads(report_path.read_text(encoding="utf-8"))["status"]
    print(f"qcheck run: {status}; report: {report_path}, {out / 'qcheck-report.md'}, {out / 'qcheck-report.html'}")
    return 1 if status == "FAIL" or code not in (0,) else 0
