"""Names that published results tables use: benchmarks, perplexity data sets, GPUs, hyperparameters.

Data, not logic: `roles.py` reads these lists to tell a benchmark score column (`ScienceQA`) from a perplexity column
named for its data set (`Wikitext2`), a GPU-named speed column (`A100`) or a hyperparameter (`group-size`).
Names are compared after `roles.normalize` (lower case, runs of other characters turned into '_').
"""
from __future__ import annotations

import re

PPL_DATASETS = frozenset({
    "wikitext", "wikitext2", "wikitext_2", "wiki2", "wiki_2", "wt2", "wikitext103", "wikitext_103", "wt103", "ptb",
    "penn_treebank", "c4", "c4_new", "ptb_new", "wikitext2_ppl", "wiki_ppl", "redpajama", "pile", "the_pile",
})
"""Data sets that quantization papers report perplexity on (GPTQ, AWQ, SmoothQuant, llama.cpp tables)."""

BENCHMARKS = frozenset({
    # language understanding and reasoning (lm-evaluation-harness / Open LLM Leaderboard task names)
    "arc", "arc_e", "arc_c", "arc_easy", "arc_challenge", "hellaswag", "mmlu", "mmlu_pro", "truthfulqa",
    "truthfulqa_mc", "truthfulqa_mc1", "truthfulqa_mc2", "winogrande", "piqa", "boolq", "openbookqa", "obqa", "sciq",
    "race", "lambada", "lambada_openai", "lambada_standard", "copa", "rte", "wic", "wsc", "cb", "multirc", "record",
    "mnli", "qnli", "qqp", "sst2", "sst_2", "cola", "mrpc", "stsb", "squad", "squad_v2", "drop", "triviaqa",
    "naturalquestions", "nq", "nq_open", "bbh", "big_bench_hard", "agieval", "gpqa", "ifeval", "musr", "math",
    "math_500", "math500", "gsm8k", "gsm_8k", "svamp", "aime", "aime_2024", "aime_2025", "aime24", "aime25",
    "humaneval", "humaneval_plus", "mbpp", "mbpp_plus", "livecodebench", "mt_bench", "alpacaeval", "alpaca_eval",
    "logiqa", "siqa", "social_iqa", "commonsenseqa", "csqa", "storycloze", "xnli", "xcopa", "anli", "ceval", "cmmlu",
    "headqa", "medqa", "pubmedqa", "mathqa", "asdiv", "coqa", "quac", "xsum", "cnn_dm", "wmt", "flores",
    # vision-language (VILA / LLaVA / NVILA tables)
    "vqav2", "vqa_v2", "gqa", "vizwiz", "scienceqa", "scienceqa_img", "sqa", "sqa_img", "textvqa", "pope", "mme",
    "mmbench", "mmbench_cn", "seed", "seed_bench", "seedbench", "llava_bench", "llava_w", "mm_vet", "mmvet", "ai2d",
    "chartqa", "docvqa", "infovqa", "mmmu", "mmmu_val", "mathvista", "videomme", "video_mme", "ocrbench", "egoschema",
    "mvbench", "nextqa", "activitynet_qa", "perception_test", "vqa", "okvqa", "coco", "nocaps", "flickr30k",
    # vision classification
    "imagenet", "imagenet_1k", "cifar10", "cifar100", "cifar_10", "cifar_100", "mnist",
    # summary columns of score tables
    "average", "avg", "mean_score", "overall", "total_score", "win_rate",
})
"""Benchmark names used as score column headers (a higher score is better; the scale is read from the cells)."""

BENCHMARK_PREFIXES = ("mmlu_", "arc_", "bbh_", "truthfulqa_", "videomme_", "video_mme_", "aime_", "mmbench_",
                      "lambada_", "hellaswag_", "winogrande_", "gsm8k_", "humaneval_", "mbpp_", "seed_")

GPU_NAME = re.compile(
    r"^(?:\d+_?x_?)?(?:nvidia_|geforce_)?(?:rtx_?)?(?:"
    r"(?:a\d{2,3}g?|h\d{2,3}|gh200|b\d{3}|v100|p100|p40|k80|t4|l4|l40s?|a6000|a5000|a4000)"  # A100, H100, T4, L40S
    r"(?:_?(?:sxm\d?|pcie|nvl|\d+g|\d+gb))*"
    r"|[1-5]0[5-9]0(?:_?ti|_?super)?"  # 3090Ti, 4090, 2080 Ti, 5090
    r"|titan_?[a-z]*|orin|jetson_?[a-z]*|mi\d{3}[a-z]?|gaudi\d?|tpu_?v?\d*[a-z]?)$")
"""GPU (and accelerator) names used as column headers of speed tables: `A100`, `4090`, `3090Ti`, `Orin`, `T4`."""

CONDITION_NAMES = frozenset({
    "batch", "batch_size", "bs", "bsz", "num_beams", "beams", "beam", "beam_size", "gpu", "gpus", "hardware", "device",
    "devices", "accelerator", "platform", "framework", "engine", "backend", "runtime", "library", "threads",
    "n_threads", "num_threads", "tp", "tp_size", "pp", "pp_size", "world_size", "num_gpus", "n_gpus",
    "prefill_length", "decode_length", "prompt_length", "prompt_len", "input_length", "input_len", "output_length",
    "output_len", "gen_length", "gen_len", "generation_length", "new_tokens", "max_new_tokens", "num_new_tokens",
    "history_length", "concurrency", "num_prompts", "request_rate", "use_cache", "compile",
    "torch_compile", "num_fewshot", "n_shot", "shots", "few_shot", "fewshot", "stage", "phase",
})
"""Experimental conditions: rows that differ in one are not compared with each other."""

QPARAM_NAMES = frozenset({
    "group_size", "groupsize", "grpsz", "gs", "group", "g", "block_size_q", "act_order", "actorder", "desc_act",
    "act", "sym", "symmetric", "alpha", "smoothing", "migration_strength", "damp", "percdamp", "damp_percent",
    "threshold", "outlier_threshold", "rank", "lora_r", "r", "lora_rank", "kernel", "imatrix", "calibration",
    "calib", "calib_data", "calibration_data", "nsamples", "calib_samples", "n_calib", "true_sequential",
    "static_groups", "zero_point", "scheme", "granularity", "per_channel", "double_quant", "compute_dtype",
    "quant_type", "bnb_4bit_quant_type", "kv_cache", "kv_cache_dtype",
})
"""Quantization hyperparameters: part of a row's config (`GPTQ, group-size 128`), never a metric."""

MEASURE_WORDS = frozenset({
    "delta", "difference", "change", "drop", "degradation", "gap", "improvement", "gain", "loss_change",
    "speedup", "speed_up", "slowdown", "ratio", "relative", "rel", "correlation", "corr", "cor", "kld", "kl",
    "divergence", "same", "top_p", "bandwidth", "load", "loading", "compression", "reduction", "saving", "savings",
    "rmse", "mse", "mae", "cosine", "sqnr", "snr", "psnr", "lpips", "fid", "clip",
})
"""Words naming derived or auxiliary measurements (deltas, ratios, divergences): measured, never range-checked."""

MEMORY_WORDS = frozenset({"memory", "mem", "vram", "ram", "size", "footprint", "disk", "gib", "gb", "mib", "mb",
                          "kb", "bytes"})
"""Words naming memory or file-size columns (`memory(MiB)`, `Model size [GiB]`, `file size`)."""
