"""The report package's layout: one job per module, data flowing one way (RunReport -> its dict -> writers), and the
public names still importable from `qcheck.report`."""
import ast
from pathlib import Path

import qcheck.report

PACKAGE = Path(qcheck.report.__file__).parent
WRITERS = ("metrics", "sections", "io", "markdown", "plots", "html", "compare")
"""Modules that read report data: none of them may import the RunReport (run) or what builds it."""


def report_imports(module: str) -> set[str]:
    """The qcheck.report modules a module imports, at the top or inside functions."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n.removeprefix("qcheck.report.") for n in names if n.startswith("qcheck.report.")} | (
        {"__init__"} if "qcheck.report" in names else set())


def test_writers_never_import_the_run_report_or_the_package():
    for module in WRITERS:
        imported = report_imports(module)
        assert not imported & {"run", "from_records", "writers", "judge", "__init__"}, (module, imported)


def test_no_import_cycles_inside_the_package():
    graph = {p.stem: report_imports(p.stem) - {"__init__"} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m)]


def test_public_names_stay_importable_from_the_package():
    for name in ("METRIC_COLUMNS", "SCHEMA_VERSION", "STEM", "VALUE_KEYS", "RunReport", "VariantReport",
                 "atomic_write_text", "load_report", "metric_cell", "metric_interval", "metric_value",
                 "render_markdown", "run_metadata", "schema", "validate_report", "weighted_t_interval", "window_data",
                 "window_log_interval", "write_json", "write_markdown", "write_reports"):
        assert hasattr(qcheck.report, name), name
    assert not (PACKAGE.parent / "compare.py").exists()  # moved to qcheck/report/compare.py, no shim
