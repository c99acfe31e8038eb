"""Where the closeness and KL bounds come from: each near-lossless variant's perplexity change and mean KL against
fp32 on many disjoint WikiText-2 slices, with the intervals the checks use.

    python benchmarks/closeness_margins.py --slices 8 --variants fp16,bf16,int8,bnb-int8 --out DIR

Slice k is `--tokens` consecutive tokens from token k * tokens (the run's `--slice k`), scored at the run's default
context (1024). Per slice and variant: perplexity ratio with the paired block-bootstrap interval
(`qcheck.invariants.closeness.relative_change_interval`), mean KL(fp32 || variant) and top-1 agreement with their
bootstrap intervals (`qcheck.measure.fidelity`). One pass over each window per model: the variant's logits give its
NLL and its KL against the reference's logits of the same window.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _output import save

from qcheck.inputs.data import find_data_file, read_text
from qcheck.inputs.models import load_model
from qcheck.invariants.closeness import relative_change_interval
from qcheck.measure.fidelity import FidelityResult
from qcheck.measure.perplexity import PerplexityResult, windows
from qcheck.quant.apply import quantize
from qcheck.variants import builtin_plan


@torch.no_grad()
def slice_pass(reference: Any, models: dict[str, Any], ids: list[int], context: int) -> dict[str, Any]:
    """Per-token NLL of every model and KL / top-1 of every variant against the reference, window by window."""
    ids_t = torch.tensor(ids)
    spans = windows(len(ids), context, context)
    nll = {name: [] for name in ["fp32", *models]}
    kl = {name: [] for name in models}
    top1 = {name: [] for name in models}
    win = []
    for w, (b, e, n) in enumerate(spans):
        inp = ids_t[b:e].unsqueeze(0)
        targets = inp[0, e - b - n:]
        ref = reference(input_ids=inp).logits[0, e - b - n - 1: e - b - 1].float()
        ref_logp = ref.log_softmax(-1)
        nll["fp32"].append(-ref_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double())
        win.append(torch.full((n,), w))
        for name, model in models.items():
            out = model(input_ids=inp).logits[0, e - b - n - 1: e - b - 1].float()
            logp = out.log_softmax(-1)
            nll[name].append(-logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double())
            kl[name].append((ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0).double())
            top1[name].append(out.argmax(-1) == ref.argmax(-1))
    results: dict[str, Any] = {}
    for name, parts in nll.items():
        token = torch.cat(parts).numpy()
        counts = [n for _, _, n in spans]
        sums, start = [], 0
        for c in counts:
            sums.append(float(token[start:start + c].sum()))
            start += c
        total = float(token.sum())
        results[name] = PerplexityResult(float(torch.tensor(total / len(token)).exp()), total, len(token), context,
                                         context, len(spans), sums, counts, token_nll=token, n_ids=len(ids))
    window = torch.cat(win).numpy()
    fidelity = {name: FidelityResult(name, torch.cat(kl[name]).numpy(), torch.cat(top1[name]).numpy(),
                                     torch.zeros(len(window)).double().numpy(), window, context, context, len(spans),
                                     0, 0.0, 0, {}) for name in models}
    return {"perplexity": results, "fidelity": fidelity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--variants", default="fp16,bf16,int8,bnb-int8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model(None)
    text = read_text(find_data_file("wikitext-2-raw/wiki.test.raw"))
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    slices = [ids[s * args.tokens:(s + 1) * args.tokens] for s in range(args.slices)]
    slices = [s for s in slices if len(s) == args.tokens]
    models = {name: quantize(loaded.model, builtin_plan(name))[0] for name in args.variants.split(",")}
    start = time.perf_counter()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    for k, chunk in enumerate(slices):
        out = slice_pass(loaded.model, models, chunk, args.context)
        ref = out["perplexity"]["fp32"]
        for name in models:
            result, fid = out["perplexity"][name], out["fidelity"][name]
            change = relative_change_interval(ref, result)
            kl, top1 = fid.interval("kl_mean"), fid.interval("top1_agreement")
            rows[name].append({"slice": k, "ppl_fp32": ref.perplexity, "ppl": result.perplexity,
                               "change": change.to_dict(), "kl_mean": kl.to_dict(), "top1": top1.to_dict()})
            print(name, k, f"{change.estimate:+.3%} [{change.low:+.3%}, {change.high:+.3%}] kl {kl.estimate:.3g} "
                            f"[{kl.low:.3g}, {kl.high:.3g}] top1 {top1.estimate:.3f}", flush=True)
    lines = [(f"# Near-lossless variants vs fp32 on {len(slices)} disjoint WikiText-2 slices of {args.tokens} tokens "
              f"(context {args.context}), {time.perf_counter() - start:.0f} s"), "",
             ("| variant | ppl change: min / max estimate | largest interval high | smallest interval low | "
              "mean KL: max estimate | KL interval high (max) | top-1 (min) |"), "|---|---|---|---|---|---|---|"]
    summary = {}
    for name, per in rows.items():
        est = [r["change"]["estimate"] for r in per]
        summary[name] = {"min_change": min(est), "max_change": max(est),
                         "max_high": max(r["change"]["high"] for r in per),
                         "min_low": min(r["change"]["low"] for r in per),
                         "max_kl": max(r["kl_mean"]["estimate"] for r in per),
                         "max_kl_high": max(r["kl_mean"]["high"] for r in per),
                         "min_top1": min(r["top1"]["estimate"] for r in per)}
        s = summary[name]
        lines.append(f"| {name} | {s['min_change']:+.3%} / {s['max_change']:+.3%} | {s['max_high']:+.3%} | "
                     f"{s['min_low']:+.3%} | {s['max_kl']:.3g} | {s['max_kl_high']:.3g} | {s['min_top1']:.3f} |")
    save(args.out, "closeness_margins", {"args": vars(args), "rows": rows, "summary": summary}, "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
