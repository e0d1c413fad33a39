#!/usr/bin/env bash
# The embedded default run (`make toy`): toy shards → tiny DMN on the CPU → evaluation on the
# held-out test images (metrics table, best/worst PNG) → the language ablation (each sentence
# replaced by another object's sentence from the same image; the score must collapse).
#
#   pipelines/toy_run.sh [--shards shards] [--runs runs] [--steps 2200] [--toy-train 4000]
#                        [--picture FILE] [-- extra dmn-train flags]
#
# A second run reuses the shards (dmn-data build finds them up to date) and the finished run
# (dmn-train --resume has nothing left to do), and only evaluates again.
set -euo pipefail

shards=shards runs=runs steps=2200 toy_train=4000 picture="" extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --shards) shards=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --toy-train) toy_train=$2; shift 2 ;;
    --picture) picture=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
run=$runs/toy
start=$(date +%s)

dmn-data build --dataset toy --out "$shards" --toy-train "$toy_train" --workers 2

if [ -f "$run/checkpoints/last.pt" ]; then resume=(--resume); else resume=(--shards "$shards/toy" --preset tiny); fi
dmn-train --out "$run" "${resume[@]}" --steps "$steps" --eval-every 500 "${extra[@]}"

dmn-eval --run-dir "$run" --split test
dmn-eval --run-dir "$run" --split test --ablate-language --no-predictions --grid 0

python - "$run" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
real = json.loads((run / "eval/test/metrics.json").read_text())["fixed"]["overall_iou"]
ablated = json.loads((run / "eval/test-ablate-language/metrics.json").read_text())["fixed"]["overall_iou"]
print(f"toy test overall IoU {real:.3f}; with another object's sentence {ablated:.3f} (drop {real - ablated:.3f})")
PY
if [ -n "$picture" ]; then
  cp "$run/eval/test/best_worst.png" "$picture"
  echo "wrote $picture"
fi
echo "toy run done in $(( $(date +%s) - start )) s; predictions: $run/eval/test/best_worst.png"
