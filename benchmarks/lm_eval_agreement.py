"""qcheck against lm-evaluation-harness on the whole WikiText-2 test split and ARC-Easy test, embedded SmolLM2 in
fp32 (saved as an HF float folder that both load), for benchmarks/RESULTS.md ("Agreement with lm-evaluation-harness").

    python benchmarks/lm_eval_agreement.py --out reports/lm_eval_agreement            # everything (hours on 2 cores)
    python benchmarks/lm_eval_agreement.py --docs 4 --questions 200 --out /tmp/slice  # a slice
    python benchmarks/lm_eval_agreement.py --model tiny --out /tmp/tiny                # whole split, tiny model

`--model tiny` scores the whole split with a random-init 2-layer Llama (hidden 64) that has SmolLM2's tokenizer and
context (8,192): the same documents, windows, prompts and choices as the embedded model at a fraction of the cost.
It checks that the two tools split, window, tokenize and score every document and question alike; the embedded
model's slice checks the numbers of a trained model.

Stages, in order (each one's figures are written as soon as it ends, so a run cut short keeps what it measured):
wikitext (qcheck `lm_eval_perplexity`, then lm-eval's own `wikitext` task on the same documents), arc (qcheck
`score_multiple_choice`, then lm-eval's ARC format), qcheck-ppl (qcheck's own strided perplexity of the raw split,
for the side-by-side table).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _output import save

from qcheck.inputs.data import find_data_file, wikitext_test
from qcheck.inputs.documents import wikitext_documents
from qcheck.inputs.models import load_model
from qcheck.inputs.tasks import load_arc_easy
from qcheck.measure.choice import score_multiple_choice
from qcheck.measure.lm_eval_compat import RollingSettings, lm_eval_perplexity
from qcheck.measure.lm_eval_reference import (
    compare_choices,
    compare_rolling,
    lm_eval_version,
    run_lm_eval,
    write_arc_task,
    write_wikitext_task,
)
from qcheck.measure.perplexity import perplexity

STAGES = ("wikitext", "arc", "qcheck-ppl")


def float_folder(workdir: Path) -> Path:
    """The embedded SmolLM2 dequantized to fp32 and saved as an HF folder (reused when already there)."""
    folder = workdir / "smollm2-fp32"
    if not (folder / "config.json").is_file():
        model, tokenizer = load_model()  # GGUF marks cleared by load_model: it saves as a float folder
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        gc.collect()
    return folder


def tiny_folder(workdir: Path) -> Path:
    """A random-init 2-layer Llama (hidden 64, seed 0) with SmolLM2's tokenizer and 8,192-token context, saved as an
    HF folder (reused when already there)."""
    from qcheck.inputs.models import load_tokenizer, random_init_like, tiny_llama_config

    folder = workdir / "tiny-smollm2-tokenizer"
    if not (folder / "config.json").is_file():
        tokenizer = load_tokenizer()
        config = tiny_llama_config(vocab_size=len(tokenizer), max_position_embeddings=8192,
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=1, eos_token_id=2)
        random_init_like(config, seed=0).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "transformers": transformers.__version__, "lm_eval": lm_eval_version(), "python": platform.python_version()}


def markdown(data: dict[str, Any]) -> str:
    lines = ["| quantity | qcheck | lm-eval | relative difference |", "| --- | --- | --- | --- |"]
    wiki = data.get("wikitext", {}).get("agreement")
    if wiki:
        for name, m in wiki["metrics"].items():
            lines.append(f"| {name} | {m['qcheck']:.6f} | {m['lm_eval']:.6f} | {m['rel_diff']:.2e} |")
        lines.append(f"| largest per-document log-likelihood difference ({wiki['n_documents']} documents) | | | "
                     f"{wiki['max_doc_rel_diff']:.2e} |")
    arc = data.get("arc", {}).get("agreement")
    if arc:
        for name in ("acc", "acc_norm"):
            lines.append(f"| ARC-Easy {name} | {arc[name]['qcheck']:.4f} | {arc[name]['lm_eval']:.4f} | |")
        lines.append(f"| same prediction (acc / acc_norm) | {arc['same_prediction']} / {arc['same_prediction_norm']} "
                     f"of {arc['n_questions']} | | {arc['max_rel_diff']:.2e} (largest, summed log-likelihoods) |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def dump() -> None:
        save(args.out, "lm_eval_agreement", data, markdown(data))

    start = time.perf_counter()
    folder = tiny_folder(workdir) if args.model == "tiny" else float_folder(workdir)
    model, tokenizer = load_model(folder)
    data["model"] = {"kind": args.model, "folder": str(folder), "dtype": str(next(model.parameters()).dtype),
                     "setup_seconds": round(time.perf_counter() - start, 1)}
    stages = args.stages.split(",")
    if "wikitext" in stages:
        split = wikitext_documents(n=args.docs)
        stage: dict[str, Any] = {"split": {k: v for k, v in split.describe().items() if k != "ids"}}
        data["wikitext"] = stage
        # float64 window sums: the agreement shown is that of the precise figure, not of lm-eval's fp32 rounding
        ours = lm_eval_perplexity(model, tokenizer, split.documents,
                                  RollingSettings(batch_size=1, round_window_sums=False))
        stage["qcheck"] = {k: v for k, v in ours.items() if k != "documents"}
        stage["qcheck"]["seconds"] = round(ours["seconds"], 1)
        print("wikitext qcheck", json.dumps({k: ours[k] for k in ("word_perplexity", "byte_perplexity",
                                                                  "bits_per_byte", "seconds")}), flush=True)
        dump()
        tasks = workdir / "tasks"
        task = write_wikitext_task(tasks, split.write_jsonl(workdir / "wikitext_pages.jsonl"))
        t0 = time.perf_counter()
        ref = run_lm_eval(folder, task, tasks, batch_size=1)
        stage["lm_eval"] = {"metrics": ref["metrics"], "model_args": ref["model_args"], "batch_size": 1,
                            "seconds": round(time.perf_counter() - t0, 1)}
        stage["agreement"] = compare_rolling(ours, ref)
        stage["documents"] = [{**d, "lm_eval_loglikelihood": r[0]} for d, r in zip(ours["documents"],
                                                                                  ref["per_sample"])]
        print("wikitext agreement", json.dumps(stage["agreement"]), flush=True)
        dump()
        gc.collect()
    if "arc" in stages:
        questions = load_arc_easy(args.questions)
        stage = {"slice": {k: v for k, v in questions.describe().items() if k != "ids"}}
        data["arc"] = stage
        t0 = time.perf_counter()
        result = score_multiple_choice(model, tokenizer, questions.items)
        stage["qcheck"] = {"accuracy": result.accuracy, "path": result.extra.get("path"),
                           "seconds": round(time.perf_counter() - t0, 1)}
        dump()
        rows = workdir / "arc_easy_slice.jsonl"
        source = find_data_file("arc-easy/test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        rows.write_text("".join([line for line in source if line.strip()][: args.questions]), encoding="utf-8")
        tasks = workdir / "tasks"
        task = write_arc_task(tasks, rows)
        t0 = time.perf_counter()
        ref = run_lm_eval(folder, task, tasks, batch_size=args.arc_batch)
        stage["lm_eval"] = {"metrics": ref["metrics"], "model_args": ref["model_args"], "batch_size": args.arc_batch,
                            "seconds": round(time.perf_counter() - t0, 1)}
        stage["agreement"] = compare_choices([r.scores for r in result.records], [q.choices for q in questions.items],
                                             [q.answer_idx for q in questions.items], ref)
        print("arc agreement", json.dumps(stage["agreement"]), flush=True)
        dump()
        gc.collect()
    if "qcheck-ppl" in stages:
        text, path = wikitext_test()
        if args.docs is not None:  # the raw text of the same documents (pages joined as in the file)
            text = "\n".join(d.page for d in wikitext_documents(n=args.docs).documents)
        t0 = time.perf_counter()
        own = perplexity(model, tokenizer, text, context=args.context, batch_size=4)
        data["qcheck_perplexity"] = {"path": str(path), "documents": args.docs or "all", "context": own.context,
                                     "stride": own.stride,
                                     "token_perplexity": own.perplexity, "units": own.per_unit(),
                                     "n_tokens": own.n_tokens, "n_words": own.n_words, "n_bytes": own.n_bytes,
                                     "seconds": round(time.perf_counter() - t0, 1)}
        print("qcheck perplexity", json.dumps(data["qcheck_perplexity"]), flush=True)
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    data["seconds"] = round(time.perf_counter() - start, 1)
    data["load_average"] = os.getloadavg()
    dump()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "tiny"), default="embedded",
                        help="embedded: SmolLM2 in fp32 (default); tiny: a random-init 2-layer Llama with its "
                             "tokenizer, for the whole split in minutes")
    parser.add_argument("--docs", type=int, default=None, help="first N WikiText-2 test documents (default all 62)")
    parser.add_argument("--questions", type=int, default=None, help="first N ARC-Easy questions (default all)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--arc-batch", type=int, default=16, help="lm-eval batch size for ARC (default 16)")
    parser.add_argument("--context", type=int, default=1024, help="qcheck perplexity context (default 1024)")
    parser.add_argument("--workdir", default="/tmp/qcheck-lm-eval-agreement",
                        help="where the fp32 folder (538 MB) and lm-eval's task files go (never committed)")
    parser.add_argument("--out", default="reports/lm_eval_agreement", help="folder for the JSON and markdown")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
