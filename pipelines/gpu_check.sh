#!/usr/bin/env bash
# The prepared GPU check (issue 10): on a machine with one NVIDIA GPU, with the project's own files
# only (no downloads), run
#   1. the CUDA tests (pytest -m cuda: the Triton SRU kernel against the loop, bf16 and fp32, …);
#   2. pipelines/bench_sru.py: per-step ops vs fused loop vs Triton, paper sizes, batch 8 and 32;
#   3. pipelines/bench_model.py --section device: paper low/high-res at 512 px, batch 8 and 32,
#      bf16 and fp32, SRU and LSTM: samples/s, peak memory, counted FLOPs, MFU;
#   4. the toy run on the GPU (dmn-data build, dmn-train 2,200 steps): wall time;
#   5. dmn-eval on the GPU: held-out overall IoU;
#   6. a 1-process torchrun of dmn-train (NCCL);
#   7. pipelines/bench_compile.py: --compile none / backbone / all, compile time and speed-up;
# and print one summary table (plus every benchmark's table), also written to --out.
#
#   bash pipelines/gpu_check.sh [--cpu] [--work DIR] [--out FILE] [--python PY]
#
# --cpu: a dry run on the CPU with tiny sizes (a few minutes), to check the script itself.
# The packages must be importable by PY (default: python); see docs/gpu.md for a machine without
# network (wheels brought in a folder). Run from the repository root. Each step's log goes to
# DIR/logs/; a failing step is reported in the table and the next one still runs.
set -uo pipefail

cpu=0 work=runs/gpu_check out="" py=${PYTHON:-python}
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) cpu=1; shift ;;
    --work) work=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
out=${out:-$work/summary.md}
logs=$work/logs
mkdir -p "$logs" "$(dirname "$out")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DMN_SRU_BACKEND=auto

if [ "$cpu" = 1 ]; then
  device=cpu
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  sru_args=(--quick --threads 1)
  model_args=(--quick --device cpu --threads 1 --dtypes fp32 --res low)
  toy_build=(--toy-train 48 --toy-val 16 --toy-test 16 --toy-size 64 --workers 1)
  toy_train=(--steps 6 --size 32 --batch-size 8 --eval-every 6 --eval-batches 1 --workers 0)
  ddp_train=(--steps 2 --size 32 --batch-size 4 --eval-every 2 --eval-batches 1 --workers 0)
  eval_args=(--batch-size 16 --workers 0)
  compile_args=(--quick --threads 1 --modes none --timeout 120)
else
  device=cuda
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: $py sees no CUDA device (use --cpu for a dry run on the CPU)" >&2
    exit 2
  fi
  sru_args=(--device cuda --batch 8 32 --dtypes bf16,fp32)
  model_args=(--device cuda --warmup 2 --steps 5)
  toy_build=(--workers 8)
  toy_train=(--steps 2200 --workers 8)
  ddp_train=(--steps 100 --eval-every 100 --eval-batches 2 --workers 4)
  eval_args=(--batch-size 64 --workers 4)
  compile_args=(--device cuda --preset paper --size 512 --batch 8 --amp --timeout 150)
fi

rows=()
started=$(date +%s)
# step NAME COMMAND...: run it with its log in $logs/NAME.log; sets $status and $secs.
step() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "== $name: $*" >&2
  if "$@" >"$logs/$name.log" 2>&1; then status=ok; else status="FAILED (exit $?, see $logs/$name.log)"; fi
  secs=$(( $(date +%s) - t0 ))
  echo "   $status in ${secs} s" >&2
}
row() { rows+=("| $1 | $2 | $3 | $4 |"); }
json() { "$py" -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo "?"; }

step env "$py" -c "
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')
try:
    import triton; print('triton', triton.__version__)
except ImportError:
    print('triton missing: the SRU runs the PyTorch loop')"
row "environment" "$status" "$(tr '\n' ' ' < "$logs/env.log")" "$secs"

# only the modules that have CUDA tests: collecting the whole suite costs a minute on a CPU
mapfile -t cuda_modules < <(grep -l "mark.cuda" tests/test_*.py)
step cuda_tests "$py" -m pytest -q -m cuda -p no:cacheprovider "${cuda_modules[@]}"
row "CUDA tests (pytest -m cuda)" "$status" "$(grep -E '(passed|failed|error|skipped|deselected)' "$logs/cuda_tests.log" | tail -n 1)" "$secs"

step bench_sru "$py" pipelines/bench_sru.py "${sru_args[@]}" --out "$work/bench_sru.md"
row "SRU: per-step ops / fused loop / Triton" "$status" "table below" "$secs"

step bench_model "$py" pipelines/bench_model.py --section device "${model_args[@]}" --out "$work/bench_model.md"
row "model benchmark" "$status" "table below" "$secs"

shards=$work/shards
step toy_data "$py" -m dmn_data.cli build --dataset toy --out "$shards" "${toy_build[@]}"
row "toy shards (dmn-data build)" "$status" "$shards/toy" "$secs"

toy=$work/runs/toy
rm -rf "$toy"
step toy_train "$py" -m dmn_train.cli_train --shards "$shards/toy" --preset tiny --device "$device" --out "$toy" --no-progress "${toy_train[@]}"
row "toy run: dmn-train on $device" "$status" "wall ${secs} s; last log: $(tail -n 50 "$toy/metrics.jsonl" 2>/dev/null | grep '"train"' | tail -n 1 | "$py" -c "import json, sys; print(f\"{json.loads(sys.stdin.read())['samples_per_s']:.0f} samples/s\")" 2>/dev/null || echo '?')" "$secs"

step toy_eval "$py" -m dmn_train.cli_eval --run-dir "$toy" --split test --device "$device" --no-progress --grid 0 "${eval_args[@]}"
row "dmn-eval on $device (toy test)" "$status" "overall IoU $(json "$toy/eval/test/metrics.json" "f\"{d['fixed']['overall_iou']:.3f}\"")" "$secs"

ddp=$work/runs/ddp
rm -rf "$ddp"
step torchrun "$py" -m torch.distributed.run --standalone --nproc_per_node 1 -m dmn_train.cli_train --shards "$shards/toy" --preset tiny --device "$device" --out "$ddp" --no-progress "${ddp_train[@]}"
row "torchrun --nproc_per_node 1" "$status" "$(grep '"train"' "$ddp/metrics.jsonl" 2>/dev/null | tail -n 1 | "$py" -c "import json, sys; print(f\"{json.loads(sys.stdin.read())['samples_per_s']:.0f} samples/s\")" 2>/dev/null || echo '?')" "$secs"

step bench_compile "$py" pipelines/bench_compile.py "${compile_args[@]}" --out "$work/bench_compile.md"
row "--compile modes" "$status" "table below" "$secs"

total=$(( $(date +%s) - started ))
{
  echo "# GPU check ($device) — $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
  echo
  echo "| check | status | result | seconds |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo "| **total** | | | $total |"
  for part in bench_sru bench_model bench_compile; do
    if [ -f "$work/$part.md" ]; then
      echo
      echo "## $part"
      echo
      cat "$work/$part.md"
    fi
  done
} > "$out"
cat "$out"
echo "written to $out" >&2
if printf '%s\n' "${rows[@]}" | grep -q FAILED; then exit 1; fi
