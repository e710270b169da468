#!/usr/bin/env bash
# What temporal adapters add: train the demo model with meanP, then freeze it and train only
# AIM temporal adapters (+ temporal embedding) on top. Results: experiments/results/.
#   bash experiments/adapters_synthetic.sh [extra hydra overrides...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-experiments/runs}
python train.py +experiment=demo model/head=meanP trainer.progress=false "$@" hydra.run.dir="$out/adapters_stage1_meanP"
python train.py +experiment=demo_aim_temporal model.init_checkpoint="$out/adapters_stage1_meanP/checkpoints/best.pt" \
  trainer.progress=false "$@" hydra.run.dir="$out/adapters_stage2_aim_temporal"
python experiments/direction_separation.py "$out/adapters_stage1_meanP" "$out/adapters_stage2_aim_temporal" \
  --out experiments/results/adapters_synthetic.json
