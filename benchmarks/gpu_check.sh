#!/bin/bash
# The checks a CUDA machine adds: the `gpu` tests, then the scaling benchmark there (PEFT in float32 and in bfloat16
# beside ptune, one size at a time so that a size cut short keeps the ones before it), then at the first size ptune's
# padded batches instead of packed ones, and both bfloat16 systems with torch's attention kept off its cuDNN kernel.
# Run from the repository root:
#
#   bash benchmarks/gpu_check.sh DATA OUT [TOKENIZER]
#
# DATA: a twitter_complaints folder (train.csv, test_unlabeled.csv); OUT: where the logs and JSON go; TOKENIZER: the
# embedded model's tokenizer saved by `random_models.py --save-tokenizer`, for a machine without the embedded
# model's package. Environment: PY (python, default python3), SIZES (default "135m 1.5b 0.5b"), STEPS (200),
# ROWS (256), TEST_S and SIZE_S (time limits in seconds, default 150 and 170).
set -u
DATA=${1:?DATA folder}; OUT=${2:?OUT folder}; TOK=${3:-}
mkdir -p "$OUT"
PY=${PY:-python3}; SIZES=${SIZES:-"135m 1.5b 0.5b"}; STEPS=${STEPS:-200}; ROWS=${ROWS:-256}
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; lscpu | grep 'Model name'; nproc
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__,
'peft', peft.__version__)"; date -u; } 2>&1 | tee "$OUT/machine.txt"

t0=$SECONDS
timeout "${TEST_S:-150}" $PY -m pytest tests/test_gpu.py -p no:cacheprovider -q -rfEs --durations=8 \
    --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests: exit $? in $((SECONDS - t0)) s"; tail -4 "$OUT/gpu_tests.log"

scaling() {  # NAME ARGS...: one scaling run, its JSON and log under OUT
    local name=$1; shift; t0=$SECONDS
    timeout "${SIZE_S:-170}" $PY benchmarks/scaling.py --data "$DATA" --models-root /tmp/ptune-gpu-models \
        --steps "$STEPS" --predict-rows "$ROWS" ${TOK:+--tokenizer "$TOK"} "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.log"
    echo "$name: exit $? in $((SECONDS - t0)) s"; grep -v '^\s*$' "$OUT/$name.log" | grep -v '%|' | tail -7
}
for size in $SIZES; do
    scaling "scaling_$size" --sizes "$size" --systems peft,peft_bf16,ptune
done
first=${SIZES%% *}
scaling "padded_$first" --sizes "$first" --systems ptune --ptune-set train.packing=false
scaling "no_cudnn_$first" --sizes "$first" --systems peft_bf16,ptune --no-cudnn-attention
