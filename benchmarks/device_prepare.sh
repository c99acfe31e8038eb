#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what a GPU machine of the device tool lacks, here on the CPU machine:
# SmolLM2's tokenizer (from the embedded GGUF), the evaluation data, and bitsandbytes as a wheel for its Python.
# Then each call carries .device and runs `bash benchmarks/device_steps.sh STEP...` (see that file).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device
[ -d .device/data ] || cp -r "${QCHECK_DATA_DIR:-../shared/data}" .device/data
[ -d .device/smollm2-tokenizer ] || HF_HUB_OFFLINE=1 python -c "
from qcheck.inputs.models import load_tokenizer
load_tokenizer().save_pretrained('.device/smollm2-tokenizer')"
ls .device/bitsandbytes-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d .device bitsandbytes==0.50.2
du -sh .device
