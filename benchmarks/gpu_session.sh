#!/usr/bin/env bash
# One GPU call for issue 19's figures, in at most 5 minutes with the installs, so that it can run twice
# in a 15-minute lease. Every record is one JSON line appended to $OUT/records.jsonl (flushed) as soon
# as it is measured, so a part stopped by its time limit keeps what it measured; all parts' output goes
# to $OUT/session.log. Nothing else comes back. The reference step runs first, on the same GPU.
#
#   here, once:   bash benchmarks/gpu_wheels.sh              # the missing wheels into .whl/ (~7 MiB)
#                 # the coordinator unpacks the reference's src/ into .refjowa/src and copies
#                 # ../shared/bench/ref_jowa_train_step.py into .bench/ (both git-ignored, never committed)
#   device run:   JOWA_COMMIT=<git rev-parse HEAD here> bash benchmarks/gpu_session.sh
#                 (carry: .whl .refjowa .bench; timeout_s 330)
#   after:        python benchmarks/commit_measured.py <files_at>/records.jsonl
#
#   GPU_SESSION_QUICK=1 bash benchmarks/gpu_session.sh      # the CPU check: every part at tiny sizes
#
# Part limits (seconds) add up to 295: reference 30, step 150M 60, step 40M 50 (with issue 19's levers
# off at batch 256 last: one more compile in 5 more seconds; cut first if short of time), loop 35,
# data+tokenize 15, pool 10, gpu tests 25, eval planning 45, eval concurrent 25. Files back: records.jsonl,
# records.profile.txt (one beam search call, profiled), session.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_session}"
mkdir -p "$OUT"
RECORDS="$OUT/records.jsonl" LOG="$OUT/session.log"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JOWA_COMMIT="${JOWA_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat .bench/commit 2>/dev/null || echo unknown)}"
QUICK="${GPU_SESSION_QUICK:-0}"
# Every limit x SCALE: a loaded CPU needs seconds just to import torch (quick mode: 10 unless set).
SCALE="${GPU_SESSION_LIMIT_SCALE:-$([ "$QUICK" = 1 ] && echo 10 || echo 1)}"

say() { echo "== $* (t=${SECONDS}s)" | tee -a "$LOG"; }
part() {  # name, seconds, command...: output to the log, an exit line to the log and stdout
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    say "$name: start, limit ${limit}s"
    timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
    say "$name: exit $?"
}

if [ -d .whl ] && [ "$QUICK" != 1 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >> "$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH"
fi
say "installed; commit $JOWA_COMMIT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv >> "$LOG" 2>&1

if [ "$QUICK" = 1 ]; then
    PARAMS=config/smoke.yaml SIZES="tiny-s" BATCHES="4 8" STEP_ARGS="--warmup 1 --repeats 2"
    REF_SIZES=40M REF_BATCHES=4 LOOP_ARGS="--size tiny-s --batch 8 --steps 10 --log-every 5 --stores 2"
    LOOP_ARGS="$LOOP_ARGS --store-steps 5000" DATA_ARGS="--pool-steps 20000 --tokenize-batch 16"
    POOL_ARGS="--stores 2 --steps 20000" EVAL_ARGS="--params config/smoke.yaml --size tiny-s --steps 5"
    EVAL_ARGS="$EVAL_ARGS --episodes 2" CONCURRENT_ARGS="$EVAL_ARGS --processes 1 2"
else
    PARAMS=params.yaml SIZES="150M 40M" BATCHES="64 256" STEP_ARGS="--warmup 5 --repeats 20"
    REF_SIZES=150M,40M REF_BATCHES=64,256 LOOP_ARGS="--size 40M --batch 64 --steps 300 --log-every 50"
    LOOP_ARGS="$LOOP_ARGS --stores 4 --store-steps 100000"
    DATA_ARGS="--pool-steps 5000000 --tokenize-batch 1024" POOL_ARGS="--stores 15 --steps 200000"
    EVAL_ARGS="--steps 40" CONCURRENT_ARGS="--steps 20"
fi

# 1. The reference's stage-2 step first (needs .refjowa/src and .bench/ref_jowa_train_step.py).
if [ -d .refjowa/src ] && [ -f .bench/ref_jowa_train_step.py ]; then
    say "reference: start, limit $((30 * SCALE))s"
    REF_SRC=.refjowa/src PEAK_TFLOPS=989 SIZES=$REF_SIZES BATCHES=$REF_BATCHES \
        timeout --kill-after=5 $((30 * SCALE)) "$PY" .bench/ref_jowa_train_step.py 2>> "$LOG" \
        | tee -a "$LOG" | grep --line-buffered '^{' >> "$RECORDS"
    say "reference: exit ${PIPESTATUS[0]}"
else
    say "reference: skipped (no .refjowa/src or .bench/ref_jowa_train_step.py)"
fi
# 2. Ours, per size and batch, static shapes, same timing convention. Its compiled graphs stay in
#    Inductor's on-disk cache, which the loop's `jowa pretrain` at the same size and batch reuses.
#    One process per size, so that each size gets its own share of the time (150M compiles longer).
#    The last size also runs its largest batch with every lever of issue 19 off (`levers: none`).
limits=(60 50)
i=0
last_size=$(echo $SIZES | tr ' ' '\n' | tail -1) last_batch=$(echo $BATCHES | tr ' ' '\n' | tail -1)
for size in $SIZES; do
    lever_args=""
    [ "$size" = "$last_size" ] && lever_args="--levers all none --levers-batches $last_batch"
    part "step $size" "${limits[$i]:-50}" "$PY" benchmarks/train_step.py --params "$PARAMS" --parts step --sizes "$size" \
        --batches $BATCHES $STEP_ARGS $lever_args --peak-tflops 989 --out "$RECORDS"
    i=$((i + 1))
done
# 3. The real loop: `jowa pretrain` with the pool on the device, vs the step's samples/s (40M at batch
#    64: the step part's cached graph, and 300 steps in seconds).
part loop 35 "$PY" benchmarks/pretrain_loop.py --params "$PARAMS" $LOOP_ARGS --out "$RECORDS"
# 4. The data path and the tokenizer's encoder (frames/s, paper hours).
part "data+tokenize" 15 "$PY" benchmarks/train_step.py --params "$PARAMS" --parts data tokenize \
    --batches $(echo $BATCHES | tr ' ' '\n' | tail -1) $DATA_ARGS --out "$RECORDS"
# 5. The pool's host memory at a scaled size, extrapolated to the paper's ~150M steps.
part pool 10 "$PY" benchmarks/pool_memory.py $POOL_ARGS --device "$( [ "$QUICK" = 1 ] && echo cpu || echo cuda)" \
    --out "$RECORDS"
# 6. The GPU test subset (skipped without CUDA).
#    (its file alone: other test modules import the workflow tools, which the image lacks)
part "pytest -m gpu" 25 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_planning_gpu.py
# 7. Evaluation: 16 episodes batched against one at a time (beam K=2 H=2 and greedy, JOWA-150M), the
#    planner alone and its profile; then 1, 2 and 4 evaluations sharing the GPU.
part "eval planning" 45 "$PY" benchmarks/eval_planning.py $EVAL_ARGS --out "$RECORDS"
part "eval concurrent" 25 "$PY" benchmarks/eval_planning.py --mode concurrent $CONCURRENT_ARGS --out "$RECORDS"
say "done: $(wc -l < "$RECORDS" 2>/dev/null || echo 0) records in $RECORDS"
