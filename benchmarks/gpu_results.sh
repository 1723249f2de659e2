#!/usr/bin/env bash
# The full-scale runs of docs/results.md on a lent GPU, one step per call: `bash benchmarks/gpu_results.sh STEP`.
# Every step is the suite's own command line (jobs/submit.py, cluster=local, wandb off: the machine has no
# network), run in this checkout; what a step made is copied to $OUT (tables, outcomes, the shards' records
# compressed, logs), the records so that any table can be scored again here (jobs/rescore.py).
#
#   setup          install the carried wheel bundles (moved to /tmp/dev/, .device/install.sh) and join the carried
#                  GGUF pieces (moved to /tmp/gguf/, .device/join_gguf.sh): each earlier call carried one folder of
#                  .device/ and moved it out of the tree
#   pair           the default pair on all 1,319 test questions: 3 rounds, each model alone, a vote of 6 each (one batch), 512 tokens
#   pair-before    the pair step on the code before a change: this checkout copied to /tmp/before with
#                  /tmp/dev/before.patch (the change, `git diff OLD -- pipeline configs jobs`: BEFORE=OLD bash benchmarks/device_pack.sh
#                  puts it in .device/whl-core) reversed; run_id gpu-pair-before
#   pair-before-again  the pair step again from the /tmp/before that pair-before made (its kernels compiled); run_id gpu-pair-before2
#   pair-again     the pair step again (TAG=-again: run_id gpu-pair-again), for a warm after beside a warm before
#   pair-refill    the pair step with the turns refilled from the shard's next problems wherever debates ended
#                  (debate.refill=true; run_id gpu-pair-refill)
#   pair-six       the pair step with each vote in six batches of debate.batch_size (debate.vote_batch_rows=null,
#                  the default before the sixteenth session; run_id gpu-pair-six)
#   pair-invariant the pair step with debate.batch_invariant=true (run_id gpu-pair-invariant): what invariance costs a whole run
#   pair-votes     the pair step with each group's vote in one batch (debate.vote_batch_rows=1536, the default since the
#                  sixteenth session) and each decoder call's digests logged (run_id gpu-pair-votes)
#   pair-votes-again  pair-votes again on the same machine (run_id gpu-pair-votes-again): does one machine repeat its texts
#                  (both log each decoder call's digests, progress.log_level=DEBUG, to find the first call that parts)
#   pair-votes-ws, pair-votes-ws-again  the same two with CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS's setting for
#                  results that repeat across streams)
#   repeat         repeat_call.py: model b's one-batch vote sequence on random weights, twice per variant: the engine as it
#                  runs (default: kv heads copied, memory-efficient kernel) against heads grouped on the math kernel
#                  (grouped-heads), cuDNN's allowed (cudnn-prefill) and math only; each with the vote's prefill seconds and
#                  peak memory; and model b alone's rows through transformers' generate, on PyTorch's backends and the engine's
#   pair-invariant-votes  the same with batch invariance (run_id gpu-pair-invariant-votes): its records must be pair-invariant's
#   graphs         bench_graphs.py --steps on the pair's two shapes (random weights): a vote-like call's steps by row bucket
#   overlap        bench_overlap.py: the pair's two vote-like calls alone, then at once on two streams (random weights)
#   rows           row_stability.py on the pair's two shapes: the row counts at which cuBLAS keeps a row's bits
#   eval5          the eval step's gsm8k (5-shot) half again, for its records (the share cut at 512 tokens)
#   twice          the same with Qwen2.5-Coder-1.5B as both models (model a's vote only)
#   tests          the engine's tests on the card (decode, invariance, kernels, sampling; not the slow ones)
#   eval           lm-eval on all 1,319: gsm8k (5-shot) and gsm8k_cot_llama (8-shot chat), both models, static engine
#   evalcmp        lm-eval's gsm8k for the 1.5B on the first 256 through both engines at one batch size (issue 32)
#   mine           the 1.5B on the first 2,000 training questions: its first answer and a vote of 4 (the pairs' source)
#   train          ORPO + LoRA on the 1.5B from the mined pairs (bf16), then the adapter through lm-eval (both
#                  tasks) and alone on all 1,319; the mined run comes from `mine`, or from /tmp/mine/ (its records, carried in .device/mine/)
#   evalcot        the eval step's gsm8k_cot_llama half again, for its records (the share cut at 512 tokens)
#   eval4          lm-eval's gsm8k with 4 shots (the Qwen2.5-Coder report's setting for its base checkpoints), both models
#   engines        bench_eval_engine.py: gsm8k for the 1.5B on all 1,319 through generate and static at batch 64 (issue 32)
#   evalgen        lm-eval through transformers' generate on the first 200 (the static engine's reference, issue 32)
#   sampler        the fused sampler against PyTorch's ops, one step at 1 to 1,536 rows (bench_sampler.py)
#   cost           the batch-invariant kernels against the fast ones, 1.5B shape, batch 1/64/256 (bench_decode.py)
#   invariance     benchmarks/invariance.py's cases with the real pair on the first 256 questions, 256 tokens
#   killed         its killed_and_resumed case alone: killed mid-run (batches of 32, after 100 records), resumed
#   queue S1 S2 .. run those steps one after another, detached, into /tmp/res (queue.log: each step's start,
#                  end and exit status); `collect` copies /tmp/res to $OUT, `wait` blocks until the queue ends or
#                  9 minutes pass (the device tool's one-call limit), then collects
set -euo pipefail
step="${1:?usage: gpu_results.sh setup|tests|pair|pair-before|pair-before-again|pair-again|pair-refill|pair-six|pair-invariant|pair-votes|pair-votes-again|pair-votes-ws|pair-votes-ws-again|repeat|pair-invariant-votes|graphs|overlap|rows|eval5|twice|eval|evalcot|eval4|engines|evalcmp|evalgen|mine|train|sampler|cost|invariance|killed|queue|collect|wait}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="/tmp/site-packages${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site-packages/bin:$PATH"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
submit() { python3 jobs/submit.py cluster=local wandb.mode=disabled wait=true "$@"; }
# The default pair on all 1,319 test questions as run_id $1, with the settings that follow, timed and collected.
pair_run() {
  local id="$1"
  shift
  time submit stage=debate models=small shards=1 debate.max_new_tokens=512 "$@" run_id="$id"
  collect "$id" debate
}

# What a finished run leaves for the record: its tables and outcomes, its records (xz), its logs and plots.
collect() {
  local run="results/$1" where="$2"
  cp "$run/${where}_accuracy.md" "$out/$1.md"
  [[ -f "$run/${where}_outcomes.csv" ]] && cp "$run/${where}_outcomes.csv" "$out/$1_outcomes.csv"
  [[ -f "$run/${where}_accuracy.json" ]] && cp "$run/${where}_accuracy.json" "$out/$1.json"
  if compgen -G "$run/$where/shard-*.jsonl" >/dev/null; then
    cat "$run/$where"/shard-*.jsonl | xz -T0 -6 >"$out/$1_records.jsonl.xz"
  elif [[ -n "$(find "$run/$where" -name '*.jsonl' -print -quit)" ]]; then  # the eval stage: <model>/<task>/shard-*.jsonl
    tar -C "$run" -cJf "$out/$1_records.tar.xz" "$where"
  fi
  tar -C results -cJf "$out/$1_logs.tar.xz" --exclude='*.jsonl' --exclude='*.lock' "$1"
}

# What the queue has made since the last call, to $OUT as one tar (the device tool brings back only what a call
# writes there, and at most 8 files a call): each file once, again only if it changed since (a step's log).
copy_back() {
  local f key list=()
  touch /tmp/sent.list
  for f in /tmp/res/*; do
    [[ -f "$f" ]] || continue
    key="$(basename "$f") $(stat -c %Y "$f")"
    grep -qxF "$key" /tmp/sent.list && continue
    list+=("$(basename "$f")")
    echo "$key" >>/tmp/sent.list
  done
  if ((${#list[@]})); then tar -C /tmp/res -cf "$out/res-$(date +%H%M%S).tar" "${list[@]}"; fi
  tail -n 20 /tmp/res/queue.log 2>/dev/null || true
}

case "$step" in
  setup)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    bash /tmp/dev/install.sh
    bash /tmp/gguf/join_gguf.sh
    python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
    ;;
  pair)
    pair_run "gpu-pair${TAG:-}"
    ;;
  pair-before)
    rm -rf /tmp/before && mkdir -p /tmp/before
    tar --exclude=./results --exclude=./.device -cf - . | tar -C /tmp/before -xf -
    (cd /tmp/before && patch -R -p1 -s </tmp/dev/before.patch && TAG=-before bash benchmarks/gpu_results.sh pair)
    ;;
  pair-before-again)
    (cd /tmp/before && TAG=-before2 bash benchmarks/gpu_results.sh pair)
    ;;
  pair-again)
    TAG=-again bash benchmarks/gpu_results.sh pair
    ;;
  pair-refill)
    # A turn takes in the shard's next problems wherever debates ended (debate.refill=true), each vote as one batch:
    # the turns' batching alone against `pair`.
    pair_run gpu-pair-refill debate.refill=true
    ;;
  pair-six)
    # Each vote in six batches of debate.batch_size rows: the default before the sixteenth session (null).
    pair_run gpu-pair-six debate.vote_batch_rows=null
    ;;
  pair-invariant)
    pair_run gpu-pair-invariant debate.batch_invariant=true
    ;;
  pair-votes)
    # Each decoder call's digests in the log (progress.log_level=DEBUG): two runs compared call by call.
    pair_run "gpu-pair-votes${TAG:-}" debate.vote_batch_rows=1536 progress.log_level=DEBUG
    ;;
  pair-votes-again)
    # The same one-batch run again on the same machine: the eleventh session's pair-votes differed from the tenth's
    # (another H100) in 160 texts of full groups, where six-batch runs agree; this says whether one machine repeats it.
    TAG=-again bash benchmarks/gpu_results.sh pair-votes
    ;;
  pair-votes-ws|pair-votes-ws-again)
    # The one-batch run with cuBLAS's workspace fixed per stream (CUBLAS_WORKSPACE_CONFIG, which cuBLAS names for
    # results that repeat where several streams are used): run_id gpu-pair-votes-ws, then gpu-pair-votes-ws-again.
    CUBLAS_WORKSPACE_CONFIG=:4096:8 TAG="-ws${step#pair-votes-ws}" bash benchmarks/gpu_results.sh pair-votes
    ;;
  repeat)
    python3 benchmarks/repeat_call.py --variants default grouped-heads cudnn-prefill math-prefill generate generate-no-cudnn \
      --json "$out/repeat-call.json"
    ;;
  pair-invariant-votes)
    time submit stage=debate models=small shards=1 debate.max_new_tokens=512 debate.batch_invariant=true debate.vote_batch_rows=1536 \
      run_id=gpu-pair-invariant-votes
    collect gpu-pair-invariant-votes debate
    ;;
  graphs)
    for shape in qwen2.5-1.5b qwen2.5-0.5b; do
      python3 benchmarks/bench_graphs.py --shape $shape --calls 2 --steps --json "$out/graphs-$shape.json"
    done
    ;;
  overlap)
    python3 benchmarks/bench_overlap.py --batch 256 --json "$out/overlap-batch256.json"
    python3 benchmarks/bench_overlap.py --json "$out/overlap.json"
    ;;
  rows)
    for shape in qwen2.5-1.5b qwen2.5-0.5b; do
      python3 benchmarks/row_stability.py --shape $shape --json "$out/rows-$shape.json"
    done
    ;;
  twice)
    time submit stage=debate models=small models.b=qwen2.5-coder-1.5b-instruct 'debate.baselines.vote_models=[a]' \
      shards=1 debate.max_new_tokens=512 run_id=gpu-twice
    collect gpu-twice debate
    ;;
  tests)
    python3 -m pytest -p no:cacheprovider $(python3 -c "import xdist" 2>/dev/null && echo "-n 4") -m "not slow" -q -rs tests/test_decode.py tests/test_invariance.py \
      tests/test_kernels.py tests/test_sampling.py 2>&1 | tee "$out/gpu-tests.log"
    ;;
  eval)
    time submit stage=eval models=small 'tasks=[gsm8k,gsm8k_cot_llama]' shards=1 eval.engine=static \
      eval.max_gen_toks=512 eval.max_batch_size=256 eval.chunk_size=512 run_id=gpu-eval
    collect gpu-eval eval
    ;;
  eval5)
    time submit stage=eval models=small 'tasks=[gsm8k]' shards=1 eval.engine=static \
      eval.max_gen_toks=512 eval.max_batch_size=256 eval.chunk_size=512 run_id=gpu-eval5
    collect gpu-eval5 eval
    ;;
  evalcot)
    time submit stage=eval models=small 'tasks=[gsm8k_cot_llama]' shards=1 eval.engine=static \
      eval.max_gen_toks=512 eval.max_batch_size=256 eval.chunk_size=512 run_id=gpu-evalcot
    collect gpu-evalcot eval
    ;;
  eval4)
    time submit stage=eval models=small 'tasks=[gsm8k]' eval.num_fewshot=4 shards=1 eval.engine=static \
      eval.max_gen_toks=512 eval.max_batch_size=256 eval.chunk_size=512 run_id=gpu-eval4
    collect gpu-eval4 eval
    ;;
  engines)
    python3 benchmarks/bench_eval_engine.py --model "$HOME/.cache/gsm8k-slurm/models/qwen2.5-coder-1.5b-instruct" \
      --dtype bfloat16 --batch-size 64 --chunk-size 256 --json "$out/eval-engine-bf16.json"
    ;;
  evalcmp)
    for engine in static generate; do
      time submit stage=eval models=small 'eval.models=[a]' 'tasks=[gsm8k]' shards=1 limit=256 eval.engine=$engine \
        eval.batch_size=64 eval.chunk_size=256 eval.max_gen_toks=512 run_id=gpu-evalcmp-$engine
      collect gpu-evalcmp-$engine eval
    done
    ;;
  evalgen)
    time submit stage=eval models=small 'tasks=[gsm8k,gsm8k_cot_llama]' shards=1 eval.engine=generate \
      eval.max_gen_toks=512 limit=200 run_id=gpu-evalgen
    collect gpu-evalgen eval
    ;;
  sampler)
    python3 benchmarks/bench_sampler.py --rows 1 64 256 1536 --json "$out/sampler.json"
    ;;
  cost)
    python3 benchmarks/bench_decode.py --shape qwen2.5-1.5b --dtype bfloat16 --batch 1 64 256 \
      --engines static static-fast --json "$out/cost-1.5b.json"
    ;;
  invariance)
    models="$HOME/.cache/gsm8k-slurm/models"
    python3 benchmarks/invariance.py --model-a "$models/qwen2.5-coder-1.5b-instruct" \
      --model-b "$models/qwen2.5-coder-0.5b-instruct" --limit 256 --new 256 --alone 8 --kill-after 100 \
      --kill-batch 64 --json "$out/invariance.json"
    ;;
  killed)
    models="$HOME/.cache/gsm8k-slurm/models"
    python3 benchmarks/invariance.py --model-a "$models/qwen2.5-coder-1.5b-instruct" \
      --model-b "$models/qwen2.5-coder-0.5b-instruct" --limit 256 --new 256 --kill-after 100 --kill-batch 32 \
      --cases killed_and_resumed --work /tmp/invariance-killed --json "$out/invariance-killed.json"
    ;;
  queue)
    shift
    mkdir -p /tmp/res
    echo "$(date +%T) queued: $*" >>/tmp/res/queue.log
    # Queues run one after another (the lock), each to the end.
    setsid flock /tmp/queue.lock bash -c 'for s in "$@"; do
        echo "$(date +%T) start $s" >>/tmp/res/queue.log
        OUT=/tmp/res bash benchmarks/gpu_results.sh "$s" >"/tmp/res/$s.log" 2>&1
        echo "$(date +%T) end $s rc=$?" >>/tmp/res/queue.log
      done; echo "$(date +%T) queue done" >>/tmp/res/queue.log' queue "$@" </dev/null >/dev/null 2>&1 &
    echo "queued: $*"
    ;;
  collect)
    copy_back
    ;;
  wait)
    # A machine given back (idle past its lease's few seconds) comes back bare: no queue to wait for.
    [[ -f /tmp/res/queue.log ]] || { echo "wait: no /tmp/res/queue.log: a fresh machine, the queue is gone" >&2; exit 1; }
    timeout "${WAIT_S:-540}" bash -c 'until (( $(grep -c "queue done" /tmp/res/queue.log) >= $(grep -c "queued:" /tmp/res/queue.log) )); do
        sleep 5; done' || true
    copy_back
    ;;
  mine)
    time submit stage=debate models=small models.b=qwen2.5-coder-1.5b-instruct data.split=train limit=2000 shards=1 \
      debate.max_rounds=1 debate.max_new_tokens=512 debate.baselines.solo=false 'debate.baselines.vote_models=[a]' \
      debate.baselines.vote_k=4 run_id=gpu-mine
    collect gpu-mine debate
    ;;
  train)
    if [[ ! -d results/gpu-mine/debate && -f /tmp/mine/gpu-mine_records.jsonl.xz ]]; then
      mkdir -p results/gpu-mine/debate
      xz -dc /tmp/mine/gpu-mine_records.jsonl.xz >results/gpu-mine/debate/shard-00000-of-00001.jsonl
    fi
    time submit stage=train models=small 'train.models=[a]' train.mine_from=gpu-mine train.max_samples=2000 \
      train.precision=bf16 run_id=gpu-train
    cp results/gpu-train/train_summary.md results/gpu-train/train_summary.json results/gpu-train/train_curves.png "$out/"
    tar -C results -cJf "$out/gpu-train_logs.tar.xz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' gpu-train
    # lm-eval first: the adapter's debate ran in the second session; this one repeats it with a new training.
    time submit stage=eval models=small models.a=gpu-train/train/qwen2.5-coder-1.5b-instruct 'eval.models=[a]' \
      'tasks=[gsm8k,gsm8k_cot_llama]' shards=1 eval.engine=static eval.max_gen_toks=512 eval.max_batch_size=256 \
      eval.chunk_size=512 run_id=gpu-evaladapter
    collect gpu-evaladapter eval
    time submit stage=debate models=small models.a=gpu-train/train/qwen2.5-coder-1.5b-instruct \
      models.b=qwen2.5-coder-1.5b-instruct shards=1 \
      debate.max_new_tokens=512 'debate.baselines.vote_models=[]' run_id=gpu-adapter
    collect gpu-adapter debate
    ;;
  *)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
