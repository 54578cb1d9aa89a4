#!/usr/bin/env bash
# The GPU numbers in one short run: MFU, peak memory and input wait of GPT-2 124M (seq 1024)
# and BERT-base (seq 128), bf16 with XLA, beside keras-hub; sized for about 10 minutes of a
# lent machine, each step bounded, so a slow one cannot eat the rest.
#
#     bash tools/gpu_check.sh                 # results as JSON lines under ${OUT:-gpu_results}/
#
# Needs TensorFlow 2.20 with CUDA (`pip install "tensorflow[and-cuda]==2.20.*"`) and this
# package installed; without a visible GPU it stops at once (exit 3) rather than measure a CPU.
# The goals: MFU >= 45% (GPT-2) and >= 40% (BERT), input wait < 2%.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
BF16_XLA=(--precision=mixed_bfloat16 --params_override=trainer.jit_compile=true)

"$PYTHON" - <<'PY' > "$OUT/machine.txt" || { cat "$OUT/machine.txt"; exit 3; }
import sys
try:
    import tensorflow as tf
except ImportError as e:
    print(f"no TensorFlow here ({e}): nothing to measure"); sys.exit(3)
gpus = tf.config.list_physical_devices("GPU")
print("tensorflow", tf.__version__, "gpus", [tf.config.experimental.get_device_details(g).get("device_name") for g in gpus])
sys.exit(0 if gpus else 3)
PY
cat "$OUT/machine.txt"

# train: both sides, one round each (a fresh process per side), 40 steps in windows of 10.
timeout 330 "$PYTHON" tools/benchmark.py train --shapes=gpt2_small,bert_base "${BF16_XLA[@]}" \
    --steps=40 --window=10 --repeats=1 --timeout=150 | tee "$OUT/train.jsonl"
# pipeline: the real input pipeline against one cached batch (the share spent waiting).
timeout 200 "$PYTHON" tools/benchmark.py pipeline --shapes=gpt2_small,bert_base "${BF16_XLA[@]}" \
    --steps=40 --window=10 --repeats=1 --timeout=90 | tee "$OUT/pipeline.jsonl"
grep -h '"summary": true' "$OUT"/*.jsonl
