"""Unit tests of the ways into qcheck.audit.optuna: resolving MODULE:FUNCTION, `qcheck optuna` (exit codes 0 / 1 /
2 / 3), the suite module `qcheck/suite/test_search_space.py`, and docs/optuna.md (its console sessions replayed).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from qcheck.audit.optuna import cli as optuna_cli
from qcheck.audit.optuna.probe import audit_objective
from qcheck.audit.optuna.resolve import resolve_objective
from qcheck.audit.optuna.rules import RULES
from qcheck.cli import main as qcheck_main
from qcheck.errors import QCheckError
from qcheck.results import Status
from qcheck.suite.test_search_space import NOT_CONFIGURED


@pytest.fixture(autouse=True)
def _repo_root_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------------
# resolving MODULE:FUNCTION: failures are bad input


def test_resolve_objective_forms(tmp_path: Path) -> None:
    fixed = resolve_objective("fixtures/objectives/seed003_fixed.py:objective")
    assert fixed.__name__ == "objective"
    (tmp_path / "objs.py").write_text(
        "class Holder:\n    @staticmethod\n    def objective(trial):\n        return trial.suggest_int('x', 0, 3)\n"
    )
    method = resolve_objective(f"{tmp_path / 'objs.py'}:Holder.objective")
    assert audit_objective(method, n_trials=3).status is Status.PASS


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fixtures/objectives/seed003.py", "expected MODULE:FUNCTION"),
        ("fixtures/objectives/nope.py:objective", "objective file not found"),
        ("qcheck_no_such_module:objective", "cannot import module 'qcheck_no_such_module'"),
        (
            "fixtures/objectives/seed003.py:nope",
            "has no attribute 'nope'; callables defined there: get_integer_config, objective, run_seed003_study, score",
        ),
        ("fixtures/objectives/seed003.py:LAYERS", "is a tuple, not a callable objective"),
    ],
)
def test_resolve_objective_errors(spec: str, message: str) -> None:
    with pytest.raises(QCheckError, match=re.escape(message)):
        resolve_objective(spec)


def test_resolve_objective_import_error_is_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import qcheck_definitely_missing_dependency\n")
    with pytest.raises(QCheckError, match="importing .*broken.py' failed: ModuleNotFoundError"):
        resolve_objective(f"{bad}:objective")

@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise RuntimeError('no GPU\\nhere')\n"])
def test_module_that_exits_or_raises_on_import_is_bad_input_in_one_line(
    body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "script.py"
    script.write_text(body)
    assert qcheck_main(["optuna", f"{script}:objective"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qcheck optuna: error: importing '{script}' failed: ") and err.count("\n") == 1


def test_internal_error_exits_3_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug\nin qcheck")

    monkeypatch.setattr(optuna_cli, "audit_objective", broken)
    assert qcheck_main(["optuna", "fixtures/objectives/seed003_fixed.py:objective"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "qcheck optuna: internal error: ZeroDivisionError: a bug in qcheck\n"


def test_cli_directions(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests/unit/test_optuna_probe.py:two_objectives"
    assert qcheck_main(["optuna", spec, "--n-trials", "5"]) == 2
    assert "--directions minimize,maximize" in capsys.readouterr().err
    assert qcheck_main(["optuna", spec, "--n-trials", "20", "--directions", "maximize,minimize"]) == 1
    assert "error   OPT202 sentinel-value" in capsys.readouterr().out
    assert qcheck_main(["optuna", spec, "--directions", "up"]) == 2
    assert "--directions takes minimize/maximize" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the suite module, run by pytest with stand-ins for the plugin's qcheck_options / qcheck_record fixtures

def run_suite(tmp_path: Path, *options: str) -> tuple[str, list[dict[str, Any]]]:
    """Run qcheck/suite/test_search_space.py under the qcheck plugin in a pytest subprocess.

    Returns pytest's output and the checks of the run report it wrote.
    """
    report_dir = tmp_path / "report"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-o", "addopts="]
    command += ["qcheck/suite/test_search_space.py", "--qcheck-report", str(report_dir), *options]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    report = report_dir / "qcheck-report.json"
    checks = json.loads(report.read_text())["checks"] if report.exists() else []
    return done.stdout + done.stderr, checks


def test_suite_module_skips_when_nothing_is_configured(tmp_path: Path) -> None:
    output, checks = run_suite(tmp_path)
    assert "SKIPPED [2] qcheck/suite/test_search_space.py" in output, output
    assert "no Optuna objective or study configured (--qcheck-optuna-objective" in output
    assert "2 skipped" in output
    assert [(c["name"], c["status"]) for c in checks] == [
        ("optuna.search_space", "SKIPPED"),  # the ids a configured run judges (qcheck_check marker)
        ("optuna.study", "SKIPPED"),
    ]
    assert checks[0]["message"] == NOT_CONFIGURED


def test_suite_module_fails_on_seed003_and_passes_the_fix(tmp_path: Path) -> None:
    run_seed003_study = resolve_objective("fixtures/objectives/seed003.py:run_seed003_study")
    url = f"sqlite:///{tmp_path / 'seed003.db'}"
    run_seed003_study(optuna.create_study(storage=url, study_name="seed003", direction="maximize"))
    output, checks = run_suite(
        tmp_path,
        "--qcheck-optuna-objective=fixtures/objectives/seed003.py:objective",
        f"--qcheck-optuna-storage={url}",
        "--qcheck-optuna-study=seed003",
    )
    assert "2 failed" in output, output
    assert "FAILED qcheck/suite/test_search_space.py::test_optuna_objective_search_space" in output
    assert [(c["name"], c["status"]) for c in checks] == [("optuna.search_space", "FAIL"), ("optuna.study", "FAIL")]
    params = ", ".join(f"{layer}_data_in_frac_width" for layer in ("key", "output", "query", "value"))
    assert checks[0]["message"] == f"OPT101 dynamic-choices [{params}]; OPT110 swallowed-suggest-error [{params}]"
    assert [f["id"] for f in checks[1]["evidence"]["findings"]] == ["OPT202", "OPT201"]

    output, checks = run_suite(tmp_path, "--qcheck-optuna-objective=fixtures/objectives/seed003_fixed.py:objective")
    assert "1 passed, 1 skipped" in output, output
    assert "no stored Optuna study configured" in output
    assert [(c["name"], c["status"], c["n"]) for c in checks] == [
        ("optuna.search_space", "PASS", 60),
        ("optuna.study", "SKIPPED", None),
    ]


# --------------------------------------------------------------------------------------------------
# docs/optuna.md shows real output: replay its console sessions


def _doc_blocks(language: str) -> list[str]:
    text = (Path("docs") / "optuna.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_docs_console_sessions_are_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path.cwd()
    monkeypatch.syspath_prepend(str(root))
    python_blocks = {block.splitlines()[0]: block for block in _doc_blocks("python")}
    (tmp_path / "my_search.py").write_text(python_blocks["# my_search.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    replayed = 0
    for block in _doc_blocks("console"):
        sessions = re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]
        code = None
        for session in sessions:
            command, _, expected = session.partition("\n")
            if command == "echo $?":
                assert str(code) == expected.strip(), block
                continue
            if command.startswith("PYTHONPATH=. python make_study.py"):
                monkeypatch.chdir(tmp_path)
                make_study = python_blocks["# make_study.py -- run with PYTHONPATH=. python make_study.py"]
                exec(compile(make_study, "make_study.py", "exec"), {})  # noqa: S102 - the docs' own example
            else:
                argv = command.split()
                assert argv[:2] == ["qcheck", "optuna"], command
                monkeypatch.chdir(tmp_path if "--storage" in argv or "my_search.py" in command else root)
                code = qcheck_main(argv[1:])
            captured = capsys.readouterr()
            assert (captured.out + captured.err).strip() == expected.strip(), command
            replayed += 1
    assert replayed == 7

def test_every_rule_is_in_the_docs_table() -> None:
    docs = (Path("docs") / "optuna.md").read_text()
    for rule in RULES.values():
        row = f"| {rule.id} | {rule.name} | {rule.severity.value} | {rule.scope.replace('objective', 'probe')} |"
        assert row in docs, row
