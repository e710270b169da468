#!/usr/bin/env bash
# meanP vs seqTransf vs frameweight on the synthetic data, same budget (the demo's settings),
# then how well each separates opposite motion directions. Results: experiments/results/.
#   bash experiments/heads_synthetic.sh [extra hydra overrides...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-experiments/runs}
for head in meanP seqTransf frameweight; do
  python train.py +experiment=demo model/head=$head trainer.progress=false "$@" hydra.run.dir="$out/heads_$head"
done
python experiments/direction_separation.py "$out/heads_meanP" "$out/heads_seqTransf" "$out/heads_frameweight" \
  --out experiments/results/heads_synthetic.json
