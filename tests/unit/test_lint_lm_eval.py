"""`qcheck lint` reads what lm-evaluation-harness writes: lm-eval itself evaluates a tiny random-init Llama in fp32 and
in bf16 on a few ARC-Easy questions, saves both results files the way its CLI does, and lint compares the pair.

Offline (a local task YAML over ../shared/data, a local model folder); about 20 s on 2 CPU cores. Skipped with the
reason when lm-eval (`pip install -e ".[lm-eval]"`) or the ARC-Easy data is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcheck.cli import main
from qcheck.lint import LintConfig, lint_paths
from qcheck.lint.loader import load_all
from qcheck.lint.view import build_view

ROOT = Path(__file__).resolve().parents[2]
ARC = ROOT.parent / "shared" / "data" / "arc-easy" / "test.jsonl"
QUESTIONS = 12
TASK = "qcheck_arc_easy_slice"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{prompt}}}}\\nAnswer:"
doc_to_target: "{{{{answer_idx}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer (every byte one token, no merges), so real text reaches distinct embeddings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(folder)


@pytest.fixture(scope="module")
def lm_eval_results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two results files written by lm-eval (fp32 and bf16 of one random-init model), as `lm_eval --output_path`."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[lm-eval]')")
    if not ARC.is_file():
        pytest.skip(f"ARC-Easy data not found at {ARC}")
    monkey = pytest.MonkeyPatch()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkey.setenv(name, "1")
    monkey.setenv("TOKENIZERS_PARALLELISM", "false")
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    from qcheck.inputs.models import random_init_like, tiny_llama_config

    root = tmp_path_factory.mktemp("lm_eval")
    model_dir = root / "tiny-llama"
    _byte_tokenizer(model_dir)
    config = tiny_llama_config(vocab_size=264, bos_token_id=1, eos_token_id=2, max_position_embeddings=512)
    random_init_like(config, seed=0).save_pretrained(model_dir)
    data = root / "arc_easy_slice.jsonl"
    data.write_text("".join(line for line, _ in zip(ARC.open(encoding="utf-8"), range(QUESTIONS))), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "arc_easy_slice.yaml").write_text(TASK_YAML.format(task=TASK, data=data), encoding="utf-8")
    manager = TaskManager(include_path=str(tasks))
    written = []
    try:
        for dtype in ("float32", "bfloat16"):
            tracker = EvaluationTracker(output_path=str(root / "out" / dtype))
            results = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={model_dir},dtype={dtype}", tasks=[TASK], task_manager=manager,
                batch_size=8, device="cpu", log_samples=False, evaluation_tracker=tracker, random_seed=0,
                numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
            tracker.save_results_aggregated(results=results, samples=None)  # what the CLI does with --output_path
            written += sorted((root / "out" / dtype).rglob("results_*.json"))
    finally:
        monkey.undo()
    assert len(written) == 2
    return written


def test_lm_eval_writes_what_lint_reads(lm_eval_results: list[Path]) -> None:
    first = json.loads(lm_eval_results[0].read_text())
    assert {"results", "n-samples", "configs", "config"} <= set(first)
    assert first["config"]["model_args"].endswith("dtype=float32")
    assert first["n-samples"][TASK]["effective"] == QUESTIONS


def test_lint_reads_the_pair_as_one_comparison(lm_eval_results: list[Path]) -> None:
    tables = load_all([str(p) for p in lm_eval_results])
    assert len(tables) == 1 and tables[0].name == TASK and tables[0].n_rows == 2
    view = build_view(tables[0], LintConfig())
    assert view.roles["acc"] == "accuracy" and view.roles["acc_norm"] == "accuracy" and view.roles["n"] == "n"
    assert [k.kind for k in view.kinds] == ["reference", "half"] and [k.bits for k in view.kinds] == [32, 16]
    assert view.baseline_rows().tolist() == [0, 0]           # the bf16 row is compared with the fp32 row
    acc = tables[0].columns["acc"]
    for row, path in enumerate(lm_eval_results):
        result = json.loads(path.read_text())["results"][TASK]
        assert acc.values[row] == pytest.approx(result["acc,none"])
        assert acc.errors[row] == pytest.approx(result["acc_stderr,none"])
    findings = lint_paths([str(p) for p in lm_eval_results])
    assert not [f for f in findings if f.severity.value == "error"]
    under = [f for f in findings if f.rule == "Q008-underpowered"]
    assert under and under[0].rows == (1, 2)                 # 12 questions behind each accuracy: too few to compare


def test_rules_apply_across_the_files(lm_eval_results: list[Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Plant an impossible accuracy in the bf16 file: the comparison of the two files reports it, exit 1."""
    broken = json.loads(lm_eval_results[1].read_text())
    broken["results"][TASK]["acc,none"] = 1.7
    planted = tmp_path / "results_bf16_broken.json"
    planted.write_text(json.dumps(broken))
    assert main(["lint", str(lm_eval_results[0]), str(planted), "--format", "json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    errors = [f for f in payload["findings"] if f["severity"] == "error"]
    assert [(f["rule"], f["columns"], f["rows"]) for f in errors] == [("Q022-impossible-value", ["acc"], [2])]
    assert "fractions, [0, 1]" in errors[0]["message"]
