#!/usr/bin/env bash
# The GPU steps issues 18 and 20 still need, named so one device call can run several back to back:
#   bash benchmarks/device_steps.sh bar8b gputests        (each step writes under $OUT/<step>/)
# bar8b     issue 18's bar: the 8B shape, seven simulated default variants, peak GPU memory vs reference + largest
# e2e       issue 20's end-to-end wall time, 135M and 1.2B shapes, all default variants
# e2egraph  e2e's 135M run with --decoding graph (the CUDA-graph decoder)
# e2e12b    e2e's 1.2B run alone
# e2ew      e2e with --workers $QCHECK_WORKERS (default 3) on the one GPU: host-bound variants overlap, the timings
#           are taken afterwards by the parent alone
# e2e8b     the same on the 8B shape (the step's limit leaves room for the folder build, ~30 s, and the report
#           written on SIGTERM: at 420 s for a 380-s run, session 12 lost the whole output)
# e2ev128k  e2e's 1.2B run with Llama 3.2 1B's own 128,256-token vocabulary (the shape `1.2b-v128k`)
# e2e8bv128k e2e8b with Llama 3.1 8B's own 128,256-token vocabulary (the shape `8b-v128k`)
# e2ebf16   e2e's 1.2B run with --reference-dtype bf16 (the default variants less bf16, which is the reference)
# e2e70s    the 70B-slice shape (8 layers of Llama-3-70B's, 15 GB in bf16) with --reference-dtype bf16 and the
#           variants of issue 21's 70B run (w4g64, int8); E2E70S_LIMIT_S (default 330) stops the run, which writes
#           its report marked unfinished
# e2e70smap e2e70s through --device-map auto with --max-memory 0=12GiB (part of the bf16 reference on the CPU), 32 new
#           tokens: issue 21's second run on one GPU, offload standing in for the second GPU; E2E70SMAP_LIMIT_S
#           (default 480) stops the run, E2E70S_VARIANTS (default w4g64,int8) picks the variants
# build     each variant's build on the 1.2B shape, twice, the bitsandbytes ones profiled (bench_build.py)
# gen       16-bit vs fp32 generation, with and without cuDNN attention (first and second calls)
# genbnb    bitsandbytes LLM.int8 generation (`generate`, host-bound): host time by Python function (cProfile) and by
#           operator (torch.profiler), 32 new tokens: what its 130 ms a step at 135M is made of
# gqa       the graph decoder's grouped-query attention, packed (qcheck's) vs copied (transformers' repeat_kv), profiled
# gengraph  generate's dynamic cache against the CUDA-graph decoder (qcheck.measure.decode): time and tokens, 256 steps
# genprefix the graph decoder with the shared few-shot prefix kept once (qcheck's) against every row holding it
#           (the layout before): time, peak memory and tokens, 256 steps, fp32 and bf16, 135M and 1.2B shapes
# genint8   bitsandbytes LLM.int8 generation: generate's dynamic cache against the static cache's eager steps (qcheck's
#           path for it since session 20), 64 steps, 135M and 1.2B shapes: time, peak, tokens; the static path with
#           the prefix copied into every row (qcheck's since session 22) and kept once, and aten operators per step
#           of each
# attack    the attacks' gradient pass, session 19's (weights requiring grad, copied key/value heads) against qcheck's,
#           1.2B shape, fp32, bf16 and w4g64, 50 questions, median of 3: time, peak above resident, same predictions
# ppl       perplexity throughput on 299k tokens: plain loop, qcheck, qcheck with a compiled decoder; bf16 and fp32
# fid       fidelity throughput on 299k tokens (reference vs its int8 variant): plain loop vs qcheck; bf16 and fp32
# fidbf16   fid in bf16 alone, one repeat: fits what a short budget leaves (session 17's fid was cut at 170 s
#           with nothing written)
# gputests  every gpu-marked test
# energy    NVML's energy counter: how often it advances, idle and busy, and the spread of measure_energy's joules per
#           call with 1 s and 2 s windows (whether the energy step's 2 s windows can shrink)
# startup   validate_run of the 135M shape under cProfile: where the 12-16 s before measuring go (bench_startup.py),
#           twice: the first process compiles what it imports into the bytecode cache, the second reads it back
# load      the 8B folder loaded onto the GPU two ways: host then .to (qcheck's) vs device_map (bench_load.py)
# devmap    the whole suite on the 1.2B shape, one device vs --device-map auto with CPU offload (three variants,
#           32 new tokens: offloaded generate moves 2.4 GB of layers per step, 124 s for 256 steps in session 12)
# devmapbf16 devmap with the bf16 variant alone (its attack is the path a device map changes: an fp32 copy, not
#           an in-place upcast)
# gputests runs every gpu test, or those of the files in $QCHECK_GPU_TESTS.
# Needs .device/ from benchmarks/device_prepare.sh. Each step has its own time limit; the call's is 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
for step in "$@"; do
    case $step in bar8b|build|e2e|e2ebf16|e2e70s|e2e70smap|e2e12b|e2egraph|e2ew|e2e8b|e2ev128k|e2e8bv128k|gen|genbnb|gengraph|genprefix|genint8|attack|gqa|ppl|fid|fidbf16|gputests|devmap|devmapbf16|load|startup|energy) ;; *) echo "unknown step $step"; exit 2 ;; esac
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/bitsandbytes-*.whl >/dev/null 2>&1
# qcheck's own metadata (its pytest11 entry point), so the pytester runs of gpu tests load the plugin as a user's
# installed qcheck does: without it the inner runs reject --qcheck-* options (session 25). The code itself is imported
# from this tree, first on the path.
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/qcheck-meta . >/dev/null 2>&1
rm -rf /tmp/qcheck-meta/qcheck
export PYTHONPATH=$PWD:/tmp/site:/tmp/qcheck-meta QCHECK_DATA_DIR=$PWD/.device/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 QCHECK_CACHE_DIR=off \
    QCHECK_TOKENIZER=$PWD/.device/smollm2-tokenizer
# A bytecode cache Python can write: a user's installed environment holds its .pyc files, while this machine's
# site-packages lack them (torch has no __pycache__), and each process compiled again what it imported: ~3,000
# modules, 7-8 s of every run's start-up in session 15's profile, with the same count in a second process (so
# writing bytecode is off there: PYTHONDONTWRITEBYTECODE is the likely cause, unset here; the diagnostic below
# prints the flag).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/qcheck-pycache
OUT=${OUT:-/tmp/device-out}
nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv,noheader
# The host's processor and cores: host-bound steps (LLM.int8's decoding, eager forwards) differ between machines
# with the same GPU (generate at 135M: 89 and 79 ms a step on two H100 machines, session 22).
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
python3 -c "
import os, sys, torch, transformers
print('dont_write_bytecode: flag', sys.flags.dont_write_bytecode, 'sys', sys.dont_write_bytecode, 'pycache_prefix:', sys.pycache_prefix)
for m in (torch, transformers):
    d = os.path.dirname(m.__file__)
    print(m.__name__, d, 'pyc cached:', os.path.isdir(os.path.join(d, '__pycache__')), 'writable:', os.access(d, os.W_OK))"
for step in "$@"; do
    mkdir -p "$OUT/$step"
    case $step in
        bar8b) timeout 330 python3 benchmarks/bench_scale.py --shapes 8b --limit-s 290 \
                   --qcheck-arg=--variants=fp16,bf16,int8,w4g64,fixed8.4,fixed16.8,mixed \
                   --qcheck-arg=-k --qcheck-arg="perplexity or fidelity or applied" --out "$OUT/$step" ;;
        e2e) timeout 420 python3 benchmarks/bench_scale.py --shapes 135m,1.2b --limit-s 200 --out "$OUT/$step" ;;
        e2e12b) timeout 240 python3 benchmarks/bench_scale.py --shapes 1.2b --limit-s 200 --out "$OUT/$step" ;;
        e2ew) timeout 420 python3 benchmarks/bench_scale.py --shapes 135m,1.2b --limit-s 200 \
                  --qcheck-arg=--workers=${QCHECK_WORKERS:-3} --out "$OUT/$step-w${QCHECK_WORKERS:-3}" ;;
        e2egraph) timeout 260 python3 benchmarks/bench_scale.py --shapes 135m --limit-s 230 \
                      --qcheck-arg=--decoding=graph --out "$OUT/$step" ;;
        e2ebf16) timeout 240 python3 benchmarks/bench_scale.py --shapes 1.2b --limit-s 200 \
                     --qcheck-arg=--reference-dtype=bf16 --out "$OUT/$step" ;;
        e2e70s) timeout $(( ${E2E70S_LIMIT_S:-330} + 90 )) python3 benchmarks/bench_scale.py --shapes 70b-slice \
                    --limit-s ${E2E70S_LIMIT_S:-330} \
                    --qcheck-arg=--reference-dtype=bf16 --qcheck-arg=--variants=w4g64,int8 --out "$OUT/$step" ;;
        e2e70smap) timeout $(( ${E2E70SMAP_LIMIT_S:-480} + 80 )) python3 benchmarks/bench_scale.py --shapes 70b-slice \
                       --limit-s ${E2E70SMAP_LIMIT_S:-480} \
                       --qcheck-arg=--reference-dtype=bf16 --qcheck-arg=--variants=${E2E70S_VARIANTS:-w4g64,int8} \
                       --qcheck-arg=--device-map=auto --qcheck-arg=--max-memory=0=12GiB,cpu=100GiB \
                       --qcheck-arg=--new-tokens=32 --out "$OUT/$step" ;;
        e2e8b) timeout 590 python3 benchmarks/bench_scale.py --shapes 8b --limit-s 440 --out "$OUT/$step" ;;
        e2ev128k) timeout 420 python3 benchmarks/bench_scale.py --shapes 1.2b-v128k --limit-s 300 --out "$OUT/$step" ;;
        e2e8bv128k) timeout 590 python3 benchmarks/bench_scale.py --shapes 8b-v128k --limit-s 440 --out "$OUT/$step" ;;
        build) timeout 150 python3 benchmarks/bench_build.py --shape 1.2b --out "$OUT/$step" ;;
        gen) timeout 200 python3 benchmarks/bench_generation.py --dtypes fp32,bf16,fp16 --caches dynamic \
                 --attention all,no-cudnn --new-tokens 64 --out "$OUT/$step" ;;
        genbnb) timeout 200 python3 benchmarks/bench_generation.py --dtypes fp32 --caches dynamic --variant bnb-int8 \
                 --attention no-cudnn --new-tokens 32 --host-profile --profile --profile-tokens 16 --top 15 \
                 --out "$OUT/$step" ;;
        gengraph) timeout 200 python3 benchmarks/bench_generation.py --dtypes fp32,bf16 --caches dynamic,graph \
                 --attention no-cudnn --new-tokens 256 --out "$OUT/$step" ;;
        genprefix) for shape in 135m 1.2b; do
                 timeout 150 python3 benchmarks/bench_generation.py --shape $shape --dtypes fp32,bf16 --caches graph \
                     --gqa packed,unshared --attention no-cudnn --new-tokens 256 --out "$OUT/$step/$shape"
             done ;;
        genint8) for shape in 135m 1.2b; do
                 timeout 150 python3 benchmarks/bench_generation.py --shape $shape --dtypes fp32 --variant bnb-int8 \
                     --caches dynamic,graph --gqa packed,prefix-kept --count-ops --attention no-cudnn --new-tokens 64 \
                     --out "$OUT/$step/$shape"
             done ;;
        attack) timeout 200 python3 benchmarks/bench_robustness.py --device cuda --shape 1.2b --questions 50 \
                    --variants fp32,bf16,w4g64 --backward before,qcheck --repeats 3 --out "$OUT/$step" ;;
        gqa) timeout 200 python3 benchmarks/bench_generation.py --dtypes fp32,bf16 --caches graph --gqa packed,copied \
                 --attention no-cudnn --new-tokens 256 --profile --profile-cache graph --profile-tokens 32 --top 12 \
                 --out "$OUT/$step" ;;
        ppl) timeout 240 python3 benchmarks/bench_perplexity.py --tokens 299008 --dtypes bf16,fp32 --batch-sizes 64 \
                 --compiled-batch-sizes 64 --repeats 3 --out "$OUT/$step" ;;
        fid) timeout 330 python3 benchmarks/bench_perplexity.py --fidelity --tokens 299008 --dtypes bf16,fp32 \
                 --batch-sizes 64 --repeats 3 --out "$OUT/$step" ;;
        fidbf16) timeout 200 python3 benchmarks/bench_perplexity.py --fidelity --tokens 299008 --dtypes bf16 \
                 --batch-sizes 64 --repeats 1 --out "$OUT/$step" ;;
        devmap) timeout 570 python3 benchmarks/bench_device_map.py --shape 1.2b --max-memory 0=2GiB,cpu=64GiB \
                    --qcheck-arg=--variants=int8,w4g64,bf16 --qcheck-arg=--new-tokens=32 --limit-s 270 \
                    --out "$OUT/$step" ;;
        devmapbf16) timeout 400 python3 benchmarks/bench_device_map.py --shape 1.2b --max-memory 0=2GiB,cpu=64GiB \
                    --qcheck-arg=--variants=bf16 --qcheck-arg=--new-tokens=32 --limit-s 200 --out "$OUT/$step" ;;
        startup) for pass in first second; do timeout 120 python3 benchmarks/bench_startup.py --shape 135m --top 30 \
                     --out "$OUT/$step/$pass" | grep -v "^| "; done ;;
        load) timeout 200 python3 benchmarks/bench_load.py --shape 8b --out "$OUT/$step" ;;
        energy) timeout 120 python3 benchmarks/bench_energy_counter.py --seconds 3 --repeats 5 --out "$OUT/$step" ;;
        gputests) timeout 300 python3 -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
                      --junitxml="$OUT/$step/junit.xml" ${QCHECK_GPU_TESTS:-} ;;
    esac 2>&1 | grep -v -e "Writing model" -e "Loading weights" | tail -c 4000
done
