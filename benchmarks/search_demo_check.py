"""What the README's search quick start shows: every test caption of a run searched in an index.

For each (video, caption) pair of the run's test split (``MSRVTT_JSFUSION_test.csv``) the caption
is searched in ``--index``; reported: how often the exact video comes first (ties at the top count
as misses, as evaluation's pessimistic rank does), how often the first hit has that caption among
its own stored captions (a video with the same description), and the run's own test t2v R@1
(``metrics.json``). On an index of the test split the first equals the third exactly.

    python -m clip4clip.search index --checkpoint RUN --split test --out INDEX
    python benchmarks/search_demo_check.py --run RUN --index INDEX
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clip4clip.search import SearchIndex  # noqa: E402
from clip4clip.search.library import video_key  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the training run folder (metrics.json, config)")
    ap.add_argument("--index", required=True)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_demo_check.json"))
    args = ap.parse_args()
    run = Path(args.run)
    index = SearchIndex.open(args.index)
    metrics = json.loads((run / "metrics.json").read_text())["test"]["t2v"]
    from data.splits import dataset_root
    root = dataset_root(index.encoder.train_config["dataset"], progress=False)
    with open(root / "MSRVTT_JSFUSION_test.csv", newline="", encoding="utf-8") as f:
        pairs = [(r["video_id"], r["sentence"]) for r in csv.DictReader(f)]
    exact = same_caption = 0
    t0 = time.perf_counter()
    for vid, caption in pairs:
        hits = index.search(caption, k=2)
        exact += video_key(hits[0].path) == vid and (len(hits) < 2 or hits[1].score < hits[0].score)
        same_caption += caption in index.captions(hits[0].id)
    n = len(pairs)
    result = {"command": "python benchmarks/search_demo_check.py " + " ".join(sys.argv[1:]), "run": str(run),
              "index_videos": index.num_videos, "queries": n, "exact_video_top1": round(100 * exact / n, 2),
              "same_caption_top1": round(100 * same_caption / n, 2), "run_test_t2v_R1": metrics["R1"],
              "equal": abs(100 * exact / n - metrics["R1"]) < 1e-9, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
