"""qcheck agrees with lm-evaluation-harness where they overlap: WikiText document perplexity (lm-eval's own
`wikitext` task code, `loglikelihood_rolling`, the same document split) to 1e-4 relative, and ARC-Easy summed
log-likelihood choices (same prediction on every question, acc and acc_norm equal).

lm-eval runs for real (`simple_evaluate` with `HFLM` on a local folder, a local task YAML, offline) on tiny
random-init Llamas: one with SmolLM2's tokenizer (read from the embedded GGUF) and a max_length of 512, so documents
span several windows and the last window keeps earlier context; one with a byte tokenizer that adds a BOS itself.
Skipped with the reason where lm-eval, the data or the embedded tokenizer is absent. About 70 s of CPU time
(2 cores; wall time grows with the machine's load).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from qcheck.inputs.documents import (
    Document,
    DocumentSplit,
    split_wikitext_pages,
    wikitext_detokenize,
    wikitext_documents,
)
from qcheck.measure.lm_eval_compat import RollingSettings, encode_document, lm_eval_perplexity, rolling_windows

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
WIKITEXT = DATA / "wikitext-2-raw" / "wiki.test.raw"
ARC = DATA / "arc-easy" / "test.jsonl"
DOCS = [0, 14, 28]       # 1,397, 627 and 31 SmolLM2 tokens: three windows (the last short), two, one
QUESTIONS = 30
TOLERANCE = 1e-4         # the bound (relative); measured here: 0 to 1.2e-7


def _need(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"evaluation data not found at {path}")


def _lm_eval():
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[lm-eval]')")


def test_page_split_keeps_subsections_and_drops_blank_pages() -> None:
    text = " \n = A = \n x . \n = = B = = \n y \n = = = C = = = \n = D = \n z \n"
    assert split_wikitext_pages(text) == [" = A = \n x . \n = = B = = \n y \n = = = C = = = ",
                                          " = D = \n z \n"]


def test_wikitext_documents_are_lm_eval_task_documents() -> None:
    """The 62 pages, scored text and word/byte counts are what lm-eval's own wikitext task code makes of them."""
    _lm_eval()
    _need(WIKITEXT)
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

    split = wikitext_documents()
    assert len(split) == 62 and split.documents[0].page.startswith(" = Robert Boulter = \n")
    for doc in split.documents:
        assert doc.text == wikitext_detokenizer({"page": doc.page})
        counts = process_results({"page": doc.page}, [0.0])
        assert (counts["word_perplexity"][1], counts["byte_perplexity"][1]) == (doc.n_words, doc.n_bytes)
    assert sum(d.n_words for d in split.documents) == 241_335 and sum(d.n_bytes for d in split.documents) == 1_287_595


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 16, 17, 40])
def test_rolling_windows_are_lm_eval_windows(n: int) -> None:
    """Same (input, scored) windows as lm-eval's get_rolling_token_windows + make_disjoint_window, and each token is
    scored once with at most max_length tokens of input."""
    _lm_eval()
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens, length, prefix = list(range(100, 100 + n)), 8, 7
    ours = rolling_windows(tokens, prefix, length)
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix, length, 1)]
    assert len(ours) == len(theirs)
    done = 0
    for (inp, scored), (context, continuation) in zip(ours, theirs):
        assert inp == (context + continuation)[-(length + 1):][:-1]
        assert continuation == tokens[done: done + scored] and len(inp) <= length
        done += scored
    assert done == n


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer alone (no model weights loaded)."""
    from qcheck.errors import ModelLoadError
    from qcheck.inputs.models import load_tokenizer

    try:
        return load_tokenizer()
    except ModelLoadError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


def _tiny_folder(folder: Path, tokenizer, max_length: int) -> Path:
    from qcheck.inputs.models import random_init_like, tiny_llama_config

    config = tiny_llama_config(vocab_size=len(tokenizer), max_position_embeddings=max_length,
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    random_init_like(config, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer):
    """lm-eval's wikitext and ARC tasks on a tiny Llama with SmolLM2's tokenizer (one HFLM load), and the folder."""
    _lm_eval()
    _need(WIKITEXT)
    _need(ARC)
    from qcheck.measure.lm_eval_reference import run_lm_eval, write_arc_task, write_wikitext_task

    root = tmp_path_factory.mktemp("lm_eval_agreement")
    folder = _tiny_folder(root / "tiny", smollm2_tokenizer, 512)
    split = wikitext_documents(select=DOCS)
    rows = root / "arc.jsonl"
    rows.write_text("".join(line for line, _ in zip(ARC.open(encoding="utf-8"), range(QUESTIONS))), encoding="utf-8")
    tasks = root / "tasks"
    names = [write_wikitext_task(tasks, split.write_jsonl(root / "pages.jsonl")), write_arc_task(tasks, rows)]
    runs = run_lm_eval(folder, names, tasks, batch_size=4)
    return folder, split, runs[names[0]], runs[names[1]]


@pytest.fixture(scope="module")
def tiny_model(both_runs):
    from qcheck.inputs.models import load_model

    return load_model(both_runs[0])


def test_wikitext_perplexity_equals_lm_eval(both_runs, tiny_model) -> None:
    from qcheck.measure.lm_eval_reference import compare_rolling

    _, split, reference, _ = both_runs
    model, tokenizer = tiny_model
    ours = lm_eval_perplexity(model, tokenizer, split.documents)
    assert ours["settings"]["max_length"] == 512 and ours["settings"]["prefix_token"] == "<|im_start|>"
    assert [d["windows"] for d in ours["documents"]] == [3, 2, 1]
    agreement = compare_rolling(ours, reference)
    print(agreement)
    assert agreement["max_doc_rel_diff"] < TOLERANCE
    assert all(m["rel_diff"] < TOLERANCE for m in agreement["metrics"].values()), agreement["metrics"]
    batched = lm_eval_perplexity(model, tokenizer, split.documents, RollingSettings(batch_size=3))
    assert compare_rolling(batched, reference)["max_doc_rel_diff"] < TOLERANCE


def test_arc_easy_choices_equal_lm_eval(both_runs, tiny_model) -> None:
    from qcheck.inputs.tasks import load_arc_easy
    from qcheck.measure.choice import score_multiple_choice
    from qcheck.measure.lm_eval_reference import compare_choices

    *_, reference = both_runs
    questions = load_arc_easy(QUESTIONS).items
    model, tokenizer = tiny_model
    for shared, together in ((True, 1), (True, 8), (False, None)):
        result = score_multiple_choice(model, tokenizer, questions, shared_context=shared, context_batch=together)
        agreement = compare_choices([r.scores for r in result.records], [q.choices for q in questions],
                                    [q.answer_idx for q in questions], reference)
        print(result.extra["path"], agreement)
        assert agreement["same_prediction"] == agreement["same_prediction_norm"] == QUESTIONS
        assert agreement["acc"]["qcheck"] == agreement["acc"]["lm_eval"]
        assert agreement["acc_norm"]["qcheck"] == agreement["acc_norm"]["lm_eval"]
        assert agreement["max_rel_diff"] < TOLERANCE


def _bos_byte_tokenizer(folder: Path):
    """A byte-level tokenizer whose encode() adds "<s>" itself (like Llama's): BOS handling is visible."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama (max_length 256) with a BOS-adding byte tokenizer, two synthetic pages (one starting with "<s>")
    as lm-eval's wikitext task sees them, and the task folder."""
    _lm_eval()
    from qcheck.measure.lm_eval_reference import write_wikitext_task

    root = tmp_path_factory.mktemp("lm_eval_bos")
    tokenizer = _bos_byte_tokenizer(root / "tiny")
    folder = _tiny_folder(root / "tiny", tokenizer, 256)
    pages = [" = Alpha = \n The alpha test , with @-@ hyphens . \n" * 12, "<s> = Beta = \n Already prefixed . \n"]
    split = DocumentSplit("bos", tuple(Document(f"d{i}", p, wikitext_detokenize(p)) for i, p in enumerate(pages)),
                          "synthetic", "")
    task = write_wikitext_task(root / "tasks", split.write_jsonl(root / "pages.jsonl"))
    return folder, tokenizer, split, task, root / "tasks"


def test_bos_adding_tokenizer_scored_like_lm_eval(byte_run) -> None:
    """A tokenizer that adds BOS on encode: lm-eval keeps it (after its own prefix token) unless the text already
    starts with the prefix token's string; qcheck's defaults do the same and agree to 1e-4."""
    from qcheck.inputs.models import load_model
    from qcheck.measure.lm_eval_reference import compare_rolling, run_lm_eval

    folder, tokenizer, split, task, tasks = byte_run
    first, prefixed = (encode_document(tokenizer, d.text, None, 1) for d in split.documents)
    assert first[0] == 1 and first[1] != 1                 # the tokenizer's own BOS, then text
    assert prefixed[0] == 1 and prefixed[1] != 1           # already starts with "<s>": nothing added
    reference = run_lm_eval(folder, task, tasks, batch_size=1)
    model, tok = load_model(folder)
    ours = lm_eval_perplexity(model, tok, split.documents)
    assert ours["settings"]["prefix_token"] == "<s>" and ours["documents"][0]["windows"] > 1
    agreement = compare_rolling(ours, reference)
    assert agreement["max_doc_rel_diff"] < TOLERANCE, agreement


def test_bf16_window_sums_rounded_like_lm_eval(byte_run) -> None:
    """lm-eval on a bf16 model sums each window's log-probs in bf16 (8 significant bits): qcheck's default does the
    same and agrees; the float64 sum differs by more than 1e-4, which is lm-eval's rounding, not a qcheck error."""
    from qcheck.inputs.models import load_model
    from qcheck.measure.lm_eval_reference import compare_rolling, run_lm_eval

    folder, _, split, task, tasks = byte_run
    reference = run_lm_eval(folder, task, tasks, batch_size=1, model_args="dtype=bfloat16")
    model, tok = load_model(folder, dtype="bf16")
    ours = lm_eval_perplexity(model, tok, split.documents)
    assert ours["settings"]["softmax_dtype"] == "bfloat16"
    assert compare_rolling(ours, reference)["max_doc_rel_diff"] < TOLERANCE
    precise = lm_eval_perplexity(model, tok, split.documents, RollingSettings(round_window_sums=False))
    rel = compare_rolling(precise, reference)["max_doc_rel_diff"]
    print("bf16, float64 window sums vs lm-eval:", rel)
    assert rel > TOLERANCE
