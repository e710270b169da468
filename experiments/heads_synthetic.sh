#!/usr/bin/env bash
# Every head on the synthetic data at the same budget (the demo's settings, only the head
# changed), then how well each separates opposite motion directions. Results: experiments/results/.
#   bash experiments/heads_synthetic.sh [extra hydra overrides...]
#   RUNS="meanP seqTransf" bash experiments/heads_synthetic.sh     # a subset
# A run is "<name>" (model/head=<name>) or "<name>:<override>;<override>" (the head plus those
# overrides, e.g. a quirk's fix). The successors run with their official behaviour and with each
# fix: DRL's and X-CLIP's masked padding, TS2-Net's hard top-K in evaluation and repeated mask.
# TS2-Net's shift goes in the demo tower's last two blocks (upstream's 10-11 of ViT-B/32's 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-experiments/runs}
ts2="model.head.shift_blocks=[2,3]"
RUNS=${RUNS:-"meanP seqTransf frameweight drl drl:model.head.padding=masked xclip xclip:model.head.padding=masked \
ts2net:$ts2 ts2net:$ts2;model.head.topk_eval=hard;model.head.mask_expand=repeat"}
dirs=()
for run in $RUNS; do
  head=${run%%:*}
  extra=()
  name=$head
  if [[ $run == *:* ]]; then
    IFS=';' read -r -a extra <<< "${run#*:}"
    for o in "${extra[@]}"; do
      case $o in *shift_blocks*) ;; *) name="${name}_${o##*.}" ;; esac
    done
  fi
  name=${name//=/-}
  python train.py +experiment=demo model/head=$head "${extra[@]}" trainer.progress=false "$@" \
    hydra.run.dir="$out/heads_$name"
  dirs+=("$out/heads_$name")
done
python experiments/direction_separation.py "${dirs[@]}" --out experiments/results/heads_synthetic.json
