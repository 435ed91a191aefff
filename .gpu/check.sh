#!/usr/bin/env bash
# The GPU checks of docs/speed.md in one call, run from the repository's root on one CUDA machine:
#
#     bash .gpu/check.sh            # every stage, in order
#     STAGES="tests small" bash .gpu/check.sh
#
# Stages (each under its own `timeout`, skipped when it would end past TOTAL_S, default 540 s):
#   setup    the wheels of shared/wheels/gpu-py312 (its README's line, plus liger-kernel and
#            cut-cross-entropy) and the project, no network
#   tests    tests/test_gpu.py, tests/test_loss.py and tests/test_step.py on CUDA
#   small    bench, small 64 x 256, GPT-2 vocabulary: train.loss dense vs chunked (vs liger, cce)
#   optionC  the same for optionC 16 x 1024
#   optionA  the same for optionA 32 x 512
#   graphs   small with train.compile_mode=reduce-overhead, profiled (the device's idle share)
#   anchors  nanoGPT and Hugging Face GPT-2 on the same card (shared/bench/gpu_anchor.py)
# Four files land in $OUT (default /tmp/lmlab-gpu-out): log.txt (every stage's output, in order),
# summary.txt (each stage's exit status and seconds), bench.jsonl (a JSON line per bench row) and
# anchor.json.
#
# The wheels, the anchor and WikiText-2-mini are read from shared/ in the repository's root when
# there (a device machine gets only the repository: copy ../shared/{wheels,bench,data/wikitext-2-mini}
# into ./shared first, listed in .git/info/exclude), else from ../shared.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/lmlab-gpu-out}
TOTAL_S=${TOTAL_S:-540}
STAGES=${STAGES:-"setup tests small optionC optionA graphs anchors"}
export PY=${PYTHON:-python3}
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

export SHARED=$PWD/shared
[ -d "$SHARED" ] || SHARED=$(cd .. && pwd)/shared
# The tests look for ../shared (tests/conftest.py): point it at the repository's copy.
if [ -d "$PWD/shared" ] && [ ! -e ../shared ]; then ln -s "$PWD/shared" ../shared; fi

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under `timeout`, logged, if time is left
    local name=$1 limit=$2 elapsed
    shift 2
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    elapsed=$(( $(date +%s) - START ))
    if (( elapsed + limit > TOTAL_S )); then
        echo "$name skipped: ${elapsed}s spent, its ${limit}s would pass TOTAL_S=${TOTAL_S}" | tee -a "$OUT/summary.txt"
        return
    fi
    local began=$(date +%s)
    echo "=== $name (at most ${limit}s): $*" >> "$OUT/log.txt"
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >> "$OUT/log.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $(( $(date +%s) - began ))s$([ $rc = 124 ] && echo ' (timed out)')" | tee -a "$OUT/summary.txt"
}

setup() {
    local wheels=$SHARED/wheels/gpu-py312
    $PY -m pip install -q --no-index --find-links "$wheels" hydra-core==1.3.8 'omegaconf<2.4' wandb==0.31.0 \
        datasets==5.2.0 optuna==5.0.0 sqlalchemy==2.1.9 \
        tiktoken hydra-submitit-launcher==1.2.0 hydra-joblib-launcher==1.2.0 &&
    $PY -m pip install -q --no-index --find-links "$wheels" liger-kernel==0.8.5 cut-cross-entropy==25.1.1 &&
    $PY -m pip install -q --no-deps --no-build-isolation -e . &&
    $PY -c "import torch, lmlab; print(torch.__version__, torch.cuda.get_device_name(0), lmlab.__file__)"
}

# A bench row per train.loss, each in its own process (its own peak memory), GPT-2's vocabulary
# (50,257 -> 50,304), bf16, compiled: the trainer's settings on CUDA.
bench_losses() {  # MODEL BATCH
    $PY -m lmlab.bench "model=$1" tokenizer=gpt2 "train.batch_size=$2" bench.compare=loss bench.pairs=1 \
        bench.warmup_steps=3 bench.steps=10 bench.windows=3 "bench.out=$OUT/bench.jsonl" \
        "hydra.run.dir=/tmp/lmlab-gpu-hydra/$1"
}

graphs() {
    $PY -m lmlab.bench model=small tokenizer=gpt2 train.batch_size=64 train.compile_mode=reduce-overhead \
        bench.profile=true bench.warmup_steps=5 bench.steps=10 bench.windows=3 "bench.out=$OUT/bench.jsonl" \
        hydra.run.dir=/tmp/lmlab-gpu-hydra/graphs
}

anchors() {
    ANCHOR_BUDGET_S=${ANCHOR_BUDGET_S:-110} OUT=$OUT $PY "$SHARED/bench/gpu_anchor.py" \
        "$SHARED/bench/reference/nanogpt_model.py"
}

export -f setup bench_losses graphs anchors
: > "$OUT/log.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; date -u; git log -1 --oneline; } \
    > "$OUT/summary.txt" 2>&1
stage setup 60 setup
stage tests 120 $PY -m pytest -o addopts= tests/test_gpu.py tests/test_loss.py tests/test_step.py -k "cuda or gpu" -q -rs  # their CUDA cases (CI runs the CPU ones); no pytest-xdist there
stage small 100 bench_losses small 64
stage optionC 110 bench_losses optionC 16
stage optionA 70 bench_losses optionA 32
stage graphs 45 graphs
stage anchors 130 anchors
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/summary.txt"
