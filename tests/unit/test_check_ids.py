"""A check keeps its id (name, variant) whether it is judged or skipped before judging, so two reports of the same
model compare check by check (`qcheck compare`, a CI gate, bench_device_map). Found on the H100 in session 14: the
offloaded run reported `latency_plausible[int8]` SKIPPED where the plain run had `plausible_speed[int8]` PASS, and 14
other suite tests named their skips after the test function, not the check."""
import json
import subprocess
import sys

VARIANTS = "fp16,bf16,int8,w4g64,fixed8.4,fixed16.8,mixed,bnb-int8,bnb-nf4"


def _ids(report: dict) -> set[tuple[str, str | None]]:
    return {(c["name"], c.get("variant")) for c in report["checks"]}


def test_every_check_keeps_its_id_when_its_measurements_are_skipped(tmp_path, tiny_folder):
    """A real run of the whole suite (every default variant, small slices), then the same records with every
    measurement marked skipped, judged again: the same check ids, each now SKIPPED with the records' reason."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "qcheck.cli", "run", "--model", str(tiny_folder), "--variants", VARIANTS,
         "--device", "cpu", "--samples", "4", "--prompts", "2", "--new-tokens", "8", "--tokens", "512",
         "--context", "128", "--out", str(run)], check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    judged = json.loads((run / "qcheck-report.json").read_text())
    assert sum(c["status"] != "SKIPPED" for c in judged["checks"]) >= 50  # most checks were judged
    for record in judged["records"]["records"]:
        record.update(status="skipped", reason="planted: this measurement was not taken", data={})
    stored = tmp_path / "skipped.json"
    stored.write_text(json.dumps(judged))
    out = tmp_path / "judged"
    proc = subprocess.run([sys.executable, "-m", "qcheck.cli", "judge", str(stored), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]  # nothing judged: an error, not a pass
    skipped = json.loads((out / "qcheck-report.json").read_text())
    assert all(c["status"] == "SKIPPED" for c in skipped["checks"])
    assert _ids(skipped) == _ids(judged)
    reasons = [c for c in skipped["checks"] if "planted: this measurement was not taken" in (c.get("message") or "")]
    assert len(reasons) >= 50
