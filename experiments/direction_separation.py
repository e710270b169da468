"""How well a trained model separates clips that differ only in motion direction.

For every test clip of the synthetic dataset, compare the model's similarity between the clip
and its own caption with the similarity to the same caption with the direction replaced by
the opposite one ("moves left" -> "moves right"): accuracy = share of clips whose own caption
wins. A frame-order-blind model (meanP) scores about 50%; also reports the perpendicular
direction (which even meanP can tell from the trajectory's axis), the test metrics, and for
each attribute the share of test captions whose top-1 clip gets it wrong (where R@1 errors
come from).

    python experiments/direction_separation.py RUN_DIR [RUN_DIR ...] [--out experiments/results/x.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clip4clip.builder import build_tokenizer  # noqa: E402
from clip4clip.weights.checkpoints import load_model_from_checkpoint  # noqa: E402
from clip4clip.engine.saving import load_checkpoint  # noqa: E402
from data.splits import build_split, dataset_root  # noqa: E402
from clip4clip.engine.evaluation import evaluate, similarity_matrix  # noqa: E402
from data.synthetic.render import OPPOSITE, canonical_caption  # noqa: E402

PERPENDICULAR = {"left": "up", "right": "down", "up": "right", "down": "left"}
ATTRIBUTES = ("color", "shape", "background", "direction")


def top1_wrong(enc, attrs: dict, model=None) -> dict:
    """Per attribute, % of captions whose best-scoring clip differs from their own clip in it."""
    # Two-tower: the cosine matrix; a pair head scores its own pairs (evaluation's matrix).
    sim = enc.text_emb @ enc.video_emb.t() if model is None or model.two_tower else similarity_matrix(enc, model)
    top = sim.argmax(1).tolist()
    own = [enc.video_ids[i] for i in enc.text_video_index.tolist()]
    got = [enc.video_ids[i] for i in top]
    return {k: 100.0 * sum(attrs[o][k] != attrs[g][k] for o, g in zip(own, got)) / len(own) for k in ATTRIBUTES}


def own_video_scores(model, tokens, enc) -> torch.Tensor:
    """Score of caption i against video i [N], as evaluation scores it (two-tower: the cosine;
    pair heads: the head's own score)."""
    ids, mask = tokens
    text = model.text_features(ids, mask)
    if model.two_tower:
        return (text * enc.video_emb).sum(-1)
    scores = model.score(text, enc.video_emb, enc.video_mask, text_chunk=16,
                         text_mask=mask if model.text_tokens else None)
    return scores.diagonal()


@torch.no_grad()
def separation(run_dir: Path) -> dict:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    cfg = ckpt["config"]
    if cfg["dataset"]["name"] != "synthetic":
        raise ValueError(f"{run_dir} was not trained on the synthetic dataset")
    model = load_model_from_checkpoint(ckpt).eval()
    tokenizer = build_tokenizer(cfg["model"], state=ckpt["tokenizer"] if ckpt["tokenizer"]["kind"] != "clip" else None)
    root = dataset_root(cfg["dataset"], progress=False)
    test = build_split(cfg["dataset"], root, "test", model.clip.visual.input_resolution, cfg["seed"], progress=False)
    metrics, enc = evaluate(model, test, tokenizer, cfg["model"]["max_words"], 128, torch.device("cpu"), progress=False)
    attrs = json.loads((root / "attributes.json").read_text())
    result = {"run": str(run_dir), "head": ckpt["model_args"]["head"],
              "adapter": ckpt["model_args"].get("adapter", {}).get("name", "none"), "test": metrics}
    for name, swap in (("opposite", OPPOSITE), ("perpendicular", PERPENDICULAR)):
        own, other = [], []
        for vid in enc.video_ids:
            a = attrs[vid]
            own.append(canonical_caption(a["color"], a["shape"], a["background"], a["direction"]))
            other.append(canonical_caption(a["color"], a["shape"], a["background"], swap[a["direction"]]))
        max_words = cfg["model"]["max_words"]
        s_own = own_video_scores(model, tokenizer(own, max_words=max_words), enc)
        s_other = own_video_scores(model, tokenizer(other, max_words=max_words), enc)
        result[f"{name}_accuracy"] = float((s_own > s_other).float().mean() * 100)
    result["top1_wrong"] = top1_wrong(enc, attrs, model)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [separation(r) for r in args.runs]
    print(f"{'run':32s} {'head':12s} {'adapter':14s} {'t2v R@1':>8s} {'opposite %':>11s} {'perpend. %':>11s}  "
          "top-1 wrong %: " + " ".join(ATTRIBUTES))
    for r in rows:
        wrong = " ".join(f"{r['top1_wrong'][k]:.1f}" for k in ATTRIBUTES)
        print(f"{Path(r['run']).name:32s} {r['head']:12s} {r['adapter']:14s} {r['test']['t2v']['R1']:8.1f} "
              f"{r['opposite_accuracy']:11.1f} {r['perpendicular_accuracy']:11.1f}  {wrong}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
