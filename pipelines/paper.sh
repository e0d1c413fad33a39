#!/usr/bin/env bash
# The DMN paper schedule for one dataset: build → low-res training → high-res stage (initialised
# from the low-res best.pt) → evaluation on every split → a table next to the original DMN numbers.
#
#   pipelines/paper.sh DATASET [--data-root data] [--shards shards] [--runs runs] [--nproc N]
#                      [--batch B] [--micro-batch M] [--from-unc RUN|none] [--allow-cpu]
#                      [-- extra dmn-train flags]
#
# DATASET: unc, unc+, gref, referit (gref-umd works too, with no published DMN number).
# As the original README: unc's low-res stage trains 24 epochs from the pretrained backbone; the
# others fine-tune the UNC low-res weights (--from-unc, default RUNS/unc-low) for 10 epochs, word
# embeddings carried over by token; every high-res stage runs 4 epochs from its low-res best.pt.
# --nproc N > 1 runs both stages under `torchrun --standalone --nproc_per_node N` (one node).
# --batch B: sentences per optimizer step, whatever N is (default 1, the original's, at its Adam
# lr 1e-5; a different lr goes in the extra flags: -- --lr 1e-4). Each process takes B/N of them
# in micro-batches of M (default B/N; lower it to fit GPU memory), accumulated B/(N·M) times.
# The first step checks the inputs (data, GPU, backbone weights); nothing long starts before.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
dataset=$1; shift
data_root=data shards=shards runs=runs nproc=1 batch=1 micro="" from_unc="" allow_cpu=0 extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --data-root) data_root=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --nproc) nproc=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --micro-batch) micro=$2; shift 2 ;;
    --from-unc) from_unc=$2; shift 2 ;;
    --allow-cpu) allow_cpu=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

case $dataset in
  unc)      refer=refcoco;  split_by=unc;      images=images/mscoco/images/train2014; splits="val testA testB" ;;
  unc+)     refer=refcoco+; split_by=unc;      images=images/mscoco/images/train2014; splits="val testA testB" ;;
  gref)     refer=refcocog; split_by=google;   images=images/mscoco/images/train2014; splits="val" ;;
  gref-umd) refer=refcocog; split_by=umd;      images=images/mscoco/images/train2014; splits="val test" ;;
  referit)  refer=refclef;  split_by=berkeley; images=images/saiapr_tc-12;            splits="test" ;;
  *) echo "error: unknown dataset '$dataset'; choose from unc, unc+, gref, gref-umd, referit" >&2; exit 2 ;;
esac
# ---- the effective batch: B sentences per optimizer step, split over N processes -------------
for v in "nproc=$nproc" "batch=$batch" "micro-batch=${micro:-1}"; do
  [[ ${v#*=} =~ ^[1-9][0-9]*$ ]] || { echo "error: --${v%%=*} ${v#*=}: give a positive integer" >&2; exit 2; }
done
for flag in "${extra[@]}"; do
  case $flag in
    --batch-size|--batch-size=*|--accum-iters|--accum-iters=*)
      echo "error: $flag: paper.sh sets the batch itself; use --batch B (sentences per optimizer step) and --micro-batch M" >&2; exit 2 ;;
  esac
done
if (( batch % nproc )); then
  echo "error: --batch $batch sentences per step cannot be split over --nproc $nproc processes: give --batch a multiple of $nproc (the original: 1 sentence per step at lr 1e-5; if you change the batch, choose the lr with -- --lr)" >&2
  exit 2
fi
share=$(( batch / nproc )); micro=${micro:-$share}
if (( micro > share || share % micro )); then
  echo "error: --micro-batch $micro must divide the $share sentences each of the $nproc processes takes per step" >&2
  exit 2
fi
accum=$(( share / micro ))
batching=(--batch-size "$micro" --accum-iters "$accum")
echo "paper.sh: $batch sentences per optimizer step = $nproc process(es) x micro-batch $micro x $accum accumulated; lr: dmn-train's (paper preset 1e-5) unless -- --lr is given"

dir=$shards/${dataset//+/plus}
name=${dataset//+/plus}

# ---- 1. inputs ------------------------------------------------------------------------------
missing=()
if [ ! -f "$dir/manifest.json" ]; then
  if [ "$dataset" = referit ] && [ -d "$data_root/referit" ]; then
    for p in referit/images referit/mask; do [ -d "$data_root/$p" ] || missing+=("$data_root/$p/"); done
  else
    for p in "$refer/refs($split_by).p" "$refer/instances.json"; do [ -f "$data_root/$p" ] || missing+=("$data_root/$p"); done
    [ -n "$(ls -A "$data_root/$images" 2>/dev/null | head -1)" ] || missing+=("$data_root/$images/ (images)")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: $dataset: missing raw files (and no built shards at $dir):" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "  get them with: dmn-data download --dataset $dataset --data-root $data_root" >&2
  exit 2
fi
if [ $allow_cpu = 0 ] && ! python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: no CUDA GPU visible: the paper preset (dpn92 at 512 px) needs one; pass --allow-cpu to run anyway" >&2
  exit 2
fi
# Datasets other than unc start from the UNC low-res weights, as the original did.
low_init=()
if [ "$dataset" != unc ] && [ "$from_unc" != none ] && [ ! -f "$runs/$name-low/checkpoints/last.pt" ]; then
  from_unc=${from_unc:-$runs/unc-low}
  src=$from_unc/checkpoints/best.pt; [ -f "$src" ] || src=$from_unc/checkpoints/last.pt
  if [ ! -f "$src" ]; then
    echo "error: $dataset: the original fine-tuned it from the UNC low-res weights, and $from_unc has no checkpoint: run pipelines/paper.sh unc first, point --from-unc at such a run, or pass --from-unc none to train from the backbone's weights (24 epochs)" >&2
    exit 2
  fi
  low_init=(--init-from "$src" --epochs 10)
fi
# The backbone weights of the low-res stage (dpn92.mx_in1k through the Hugging Face cache, or
# whatever --pretrained/--backend the extra flags give): found and loadable, or one line and exit 2.
if [ ! -f "$runs/$name-low/checkpoints/last.pt" ] && [ ${#low_init[@]} = 0 ]; then
  dmn-train --preset paper --fetch-weights "${extra[@]}" >/dev/null
fi
if [ "$nproc" -gt 1 ]; then
  train=(torchrun --standalone --nproc_per_node "$nproc" "$(command -v dmn-train)")
  evaluate=(torchrun --standalone --nproc_per_node "$nproc" "$(command -v dmn-eval)")
else
  train=(dmn-train); evaluate=(dmn-eval)
fi
set -x

# ---- 2. shards (a no-op when they are built) ------------------------------------------------
dmn-data build --dataset "$dataset" --data-root "$data_root" --out "$shards"

# ---- 3. low-res stage (the original README: dpn92, K=10, 3 language layers, mix-we; ---------
#         unc+/gref/referit: 10 epochs from the UNC low-res weights)
low=$runs/$name-low
if [ -f "$low/checkpoints/last.pt" ]; then resume=(--resume); else resume=("${low_init[@]}"); fi
"${train[@]}" --shards "$dir" --preset paper --out "$low" "${resume[@]}" "${batching[@]}" "${extra[@]}"

# ---- 4. high-res stage (4 epochs), from the low-res weights ----------------------------------
high=$runs/$name-high
init=$low/checkpoints/best.pt; [ -f "$init" ] || init=$low/checkpoints/last.pt
if [ -f "$high/checkpoints/last.pt" ]; then stage2=(--resume); else stage2=(--init-from "$init"); fi
# The original README's high-res stage: 4 epochs (extra flags come last and win).
"${train[@]}" --shards "$dir" --preset paper --high-res --epochs 4 --out "$high" "${stage2[@]}" "${batching[@]}" "${extra[@]}"

# ---- 5. every evaluation split, then the table ------------------------------------------------
for split in $splits; do
  "${evaluate[@]}" --run-dir "$high" --split "$split"
done
set +x
python "$(dirname "$0")/paper_table.py" "$dataset" "$high" $splits
