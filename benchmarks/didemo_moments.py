"""Moment localisation on DiDeMo: how often the search hit's best segment overlaps the annotated
moment, for each description inside its own video.

    python -m clip4clip.search index --checkpoint RUN --videos DIDEMO/videos --out INDEX
    python benchmarks/didemo_moments.py --index INDEX --didemo DIDEMO [--split test] [--out JSON]

DIDEMO is the dataset root in CLIP4Clip's layout ({split}_list.txt, {split}_data.json, videos/).
Prints R1@IoU0.5, R1@IoU0.7 and mIoU (percent; a description's IoU is the best over its
annotators) and writes JSON (default benchmarks/results/didemo_moments.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import machine_info, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="an index of the DiDeMo videos folder")
    ap.add_argument("--didemo", required=True, help="the DiDeMo dataset root")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "didemo_moments.json"))
    args = ap.parse_args(argv)

    from clip4clip.search import SearchIndex
    from clip4clip.search.moments import didemo_items, evaluate_moments
    from data import DiDeMoDataset

    ds = DiDeMoDataset(args.didemo, args.split, allow_missing=True, verify=False, progress=False)
    metrics = evaluate_moments(SearchIndex.open(args.index), didemo_items(ds))
    print(f"\n{'split':>6} {'queries':>8} {'R1@IoU0.5':>10} {'R1@IoU0.7':>10} {'mIoU':>6} {'missing':>8}")
    print(f"{args.split:>6} {metrics['num_queries']:>8} {metrics['R1@IoU0.5']:>10.1f} {metrics['R1@IoU0.7']:>10.1f} "
          f"{metrics['mIoU']:>6.1f} {metrics['missing_videos']:>8}")
    write_result({"command": "python benchmarks/didemo_moments.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "machine": machine_info(), "split": args.split, "metrics": metrics}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
