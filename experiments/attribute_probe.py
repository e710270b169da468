"""How fast can the demo's image tower learn one attribute (shape, colour, ...) on its own?

Trains the image tower of a config (default: the demo's) from random weights plus a linear
layer, with cross-entropy on single frames of the synthetic train split and the attribute's
label, then reports validation accuracy every 50 steps. No text tower and no contrastive
loss: this separates "the tower cannot see it (yet)" from "the contrastive signal does not
ask for it". Used for the shape study in experiments/README.md.

    python experiments/attribute_probe.py [--attribute shape] [--steps 300] [hydra overrides...]
    python experiments/attribute_probe.py model.clip.vision_pos_init_std=0.3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from clip4clip.weights import build_model  # noqa: E402
from data.splits import build_split, dataset_root  # noqa: E402

ATTRIBUTES = ("color", "shape", "background", "direction")


def load_split(cfg: dict, root: Path, split: str, attribute: str):
    """Frames [N, T, 3, S, S] (normalised) and attribute labels [N] of a split's videos."""
    ds = build_split(cfg["dataset"], root, split, int(cfg["model"]["image_size"]), int(cfg["seed"]), progress=False)
    videos = ds.video_dataset()
    attrs = json.loads((root / "attributes.json").read_text())
    frames = torch.stack([videos[i]["video"] for i in range(len(videos))])
    values = [attrs[v][attribute] for v in videos.video_ids]
    return frames, values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attribute", default="shape", choices=ATTRIBUTES)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256, help="frames per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the accuracy curve as JSON")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.clip.vision_pos_init_std=0.3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        # output_dir is a Hydra-runtime interpolation; this script writes no run folder.
        cfg = compose("train", overrides=[f"+experiment={args.experiment}", "paths.output_dir=unused",
                                          *args.overrides])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    if cfg["dataset"]["name"] != "synthetic":
        raise SystemExit(f"dataset.name={cfg['dataset']['name']!r}: the probe needs the synthetic dataset's labels")
    root = dataset_root(cfg["dataset"], progress=True)
    x_train, train_values = load_split(cfg, root, "train", args.attribute)
    x_val, val_values = load_split(cfg, root, "val", args.attribute)
    classes = sorted(set(train_values))
    y_train = torch.tensor([classes.index(v) for v in train_values])
    y_val = torch.tensor([classes.index(v) for v in val_values])

    tower = build_model(cfg["model"], vocab_size=8).clip.visual  # the text tower is not used
    head = torch.nn.Linear(int(cfg["model"]["clip"]["arch"]["embed_dim"]), len(classes))
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.05)
    curve, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        # A random frame of each random clip: the attribute is visible in every frame.
        i = torch.randint(len(x_train), (args.batch,))
        t = torch.randint(x_train.shape[1], (args.batch,))
        loss = torch.nn.functional.cross_entropy(head(tower(x_train[i, t])), y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad():
                acc = (head(tower(x_val[:, 0])).argmax(-1) == y_val).float().mean().item() * 100
            curve.append({"step": step, "loss": loss.item(), "val_accuracy": acc})
            print(f"step {step:5d}  loss {loss.item():.3f}  val {args.attribute} accuracy {acc:5.1f}%  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"attribute": args.attribute, "overrides": args.overrides,
                                        "classes": classes, "curve": curve}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
