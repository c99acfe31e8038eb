"""Property test: any table hypothesis can generate is linted without a crash (findings, or a clear QCheckError)."""
from __future__ import annotations

import csv
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcheck.errors import QCheckError
from qcheck.lint import lint_tables, table_from_csv_text, table_from_records
from qcheck.lint.engine import CRASH_RULE
from qcheck.lint.reshape import normalize_layout

NAMES = ["config", "model", "dataset", "bits", "sparsity", "ppl", "ppl_low", "ppl_high", "accuracy", "clean_acc",
         "robust_acc", "f1", "n", "correct", "num_classes", "latency_ms", "throughput", "sec_per_sample",
         "processing_time_s", "energy_mj", "power_w", "params", "context_length", "number", "value", "sample_id",
         "response", "odd column", "Tokens/Second", "A100", "SEED", "Example", "group-size", "Measure", "fp16",
         "gptq-int4", "std err - fp16", "Memory (VRAM)"]
LABELS = ["fp32", "FP16", "bf16", "int8", "int4", "w4g64", "Mixed", "QAT", "baseline", "mean", "16-bit", "gpt2",
          "wikitext-2", "", "random", "l1"]
CELLS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(LABELS + ["NaN", "None", "inf", "-", "1,234", "40%", "12ms", "n/a", "0", "0.0", "1e308",
                              "10.76 ± 0.07", "OOM", "--", "...", "4.50 GB (19.05%)", "205 t/s", "-0.019 ± 0.003 %",
                              "7B", "perplexity", "acc_norm", "TODO(x)"]),
    st.text(max_size=6),
)


@st.composite
def tables(draw: st.DrawFn) -> list[dict[str, object]]:
    columns = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=8, unique=True))
    n_rows = draw(st.integers(1, 12))
    return [{c: draw(CELLS) for c in columns} for _ in range(n_rows)]


def _lint(table) -> None:
    try:
        table = normalize_layout(table)   # what the loader does to every file: pivot, melt, attach stderr
        findings = lint_tables([table])
    except QCheckError as exc:
        assert str(exc)
        return
    assert all(f.rule != CRASH_RULE for f in findings), [f.message for f in findings if f.rule == CRASH_RULE]
    for finding in findings:
        assert finding.to_dict()["rule"] == finding.rule
        assert all(1 <= r <= table.n_rows for r in finding.rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_any_record_table_lints_without_crashing(records: list[dict[str, object]]) -> None:
    _lint(table_from_records(records, "hypothesis.json"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_any_csv_table_lints_without_crashing(records: list[dict[str, object]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    try:
        table = table_from_csv_text(buffer.getvalue(), "hypothesis.csv")
    except QCheckError:
        return
    _lint(table)
