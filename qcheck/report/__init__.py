"""Reports: the run report (run), its metrics (metrics), the JSON file and its schema (io), the Markdown and HTML
writers (markdown, html, plots; laid out by sections), writing all three (writers), `qcheck compare` (compare)
and `qcheck judge` (judge). Data flows one way: RunReport -> its dict -> writers; no writer imports run."""
from qcheck.report.io import (  # noqa: F401 - the package's public names
    SCHEMA_VERSION,
    STEM,
    atomic_write_text,
    load_report,
    schema,
    validate_report,
    write_json,
)
from qcheck.report.markdown import render_markdown, write_markdown  # noqa: F401
from qcheck.report.metrics import (  # noqa: F401
    METRIC_COLUMNS,
    VALUE_KEYS,
    interval_note,
    metric_cell,
    metric_interval,
    metric_value,
    weighted_t_interval,
    window_data,
    window_log_interval,
)
from qcheck.report.run import RunReport, VariantReport, run_metadata  # noqa: F401
from qcheck.report.writers import write_reports  # noqa: F401
