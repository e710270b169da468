"""Efficiency of every method on ViT-B/32 at 12 frames, in one run on this machine.

For meanP, seqLSTM, seqTransf, frameweight, tightTransf, DRL, X-CLIP, TS2-Net and AIM temporal
adapters (random weights, ViT-B/32 shapes): trainable parameters, forward GFLOPs per clip
(counted by ``torch.utils.flop_counter``: one caption, one clip and their score), the time and
peak memory of one training step (forward + backward of a batch, no optimiser step) on CPU, the
time to score 1,000 captions against 1,000 videos from their stored features (encoding
excluded: it is the towers' cost, the same for every method but TS2-Net), each as a ratio to
meanP measured in the same run; and the training step's achieved GFLOP/s as a fraction of this
machine's float32 matmul peak, also measured in the run.

Each method runs in its own process, so the peak resident memory is its own.

    python benchmarks/efficiency.py                      # all methods, batch 4
    python benchmarks/efficiency.py --methods meanP drl  # a subset
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from _report import REPO, machine_info, write_result

METHODS = ["meanP", "seqLSTM", "seqTransf", "frameweight", "tightTransf", "drl", "xclip", "ts2net", "aim_temporal"]
#: ViT-B/32 as OpenAI released it.
VIT_B32 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12)
#: Above this many seconds (projected from the first rows) the 1,000 x 1,000 scoring is
#: measured on fewer rows and scaled: scoring is linear in the number of captions.
SCORING_BUDGET_S = 60.0


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _build(method: str):
    import torch

    from clip4clip.clip import CLIP, CLIPConfig
    from clip4clip.model import CLIP4Clip
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(**VIT_B32))
    if method == "aim_temporal":
        import adapters
        model = CLIP4Clip.from_clip(clip, "meanP")
        adapters.inject_aim(model.clip.visual, num_frames=12, temporal=True, spatial=False, joint=False)
        adapters.configure_trainable(model, train_adapters=True, train_temporal_embedding=True, train_head=True,
                                     train_text=False, train_lora=False, train_logit_scale=False)
        return model
    return CLIP4Clip.from_clip(clip, method)


def _batch(n: int, frames: int, words: int, seed: int = 0) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, words, dtype=torch.long)
    for i in range(n):
        length = max(3, words - 7 * i)
        ids[i, 0] = 49406
        ids[i, 1:length - 1] = torch.randint(1, 49000, (length - 2,), generator=g)
        ids[i, length - 1] = 49407
    mask = torch.ones(n, frames, dtype=torch.long)
    if n > 1:
        mask[-1, frames // 2:] = 0  # one video with padded frames
    return {"input_ids": ids, "attention_mask": (ids > 0).long(),
            "video": torch.randn(n, frames, 3, 224, 224, generator=g), "video_mask": mask}


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """float32 matmul GFLOP/s of this machine with the current threads (best of ``reps``)."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _scoring_seconds(model, pairs: int, frames: int, words: int) -> Dict[str, float]:
    """Seconds to score ``pairs`` captions x ``pairs`` videos from stored features: the features
    of a few real captions and clips, repeated with noise to ``pairs`` rows (the cost depends on
    the shapes, not the values)."""
    import torch

    from clip4clip.engine.evaluation import EncodedSplit, similarity_matrix
    small = _batch(4, frames, words, seed=1)
    with torch.no_grad():
        model.eval()
        text = model.text_features(small["input_ids"], small["attention_mask"])
        video = model.video_features(small["video"][:, :frames], small["video_mask"])
    rep = -(-pairs // 4)
    g = torch.Generator().manual_seed(2)
    text = text.repeat(rep, *[1] * (text.ndim - 1))[:pairs]
    video = video.repeat(rep, *[1] * (video.ndim - 1))[:pairs]
    text = text + 1e-3 * torch.randn(text.shape, generator=g)
    video = video + 1e-3 * torch.randn(video.shape, generator=g)
    vmask = small["video_mask"].repeat(rep, 1)[:pairs]
    tmask = small["attention_mask"].repeat(rep, 1)[:pairs]
    enc = EncodedSplit(text, video, torch.arange(pairs), [""] * pairs, [str(i) for i in range(pairs)],
                       video_mask=None if model.two_tower else vmask,
                       text_mask=tmask if model.text_tokens else None)
    probe_rows = max(1, pairs // 100)
    probe = _timed(lambda: similarity_matrix(enc, model, rows=slice(0, probe_rows)))
    projected = probe * pairs / probe_rows
    if projected <= SCORING_BUDGET_S:
        return {"seconds": _timed(lambda: similarity_matrix(enc, model)), "rows_measured": pairs}
    rows = min(pairs, max(probe_rows, int(pairs * SCORING_BUDGET_S / 4 / projected)))  # ~15 s of scoring
    seconds = _timed(lambda: similarity_matrix(enc, model, rows=slice(0, rows)))
    return {"seconds": seconds * pairs / rows, "rows_measured": rows}


def measure_one(method: str, batch: int, frames: int, words: int, pairs: int, steps: int) -> dict:
    """Every figure of one method, in this process."""
    import torch

    from clip4clip.engine.step import ContrastiveStep
    model = _build(method)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    one = _batch(1, frames, words)

    def forward_one():
        with torch.no_grad():
            t = model.text_features(one["input_ids"], one["attention_mask"])
            v = model.video_features(one["video"], one["video_mask"])
            model.score(t, v, one["video_mask"], text_mask=one["attention_mask"])
    model.eval()
    fwd_flops = _flops(forward_one)
    model.train()
    data = _batch(batch, frames, words)
    step = ContrastiveStep(model)

    def train_step():
        model.zero_grad(set_to_none=True)
        step(dict(data))
    train_flops = _flops(train_step)
    rss_before = _rss_mib()
    times = [_timed(train_step) for _ in range(steps)]
    peak = _rss_mib()
    step_s = statistics.median(times)
    scoring = _scoring_seconds(model, pairs, frames, words)
    return {"method": method, "trainable_params": trainable, "forward_gflops_per_clip": fwd_flops / 1e9,
            "train_step_gflops": train_flops / 1e9, "train_step_s": step_s, "train_step_times_s": times,
            "peak_rss_mib": peak, "step_peak_rss_increase_mib": max(0.0, peak - rss_before),
            "achieved_gflops": train_flops / 1e9 / step_s, "scoring_1000x1000_s": scoring["seconds"],
            "scoring_rows_measured": scoring["rows_measured"]}


def table(rows: List[dict], peak: float) -> str:
    base = next((r for r in rows if r["method"] == "meanP"), rows[0])
    head = ("| method | trainable params (M) | fwd GFLOPs / clip | x meanP | train step (s) | x meanP | "
            "peak RSS (MiB) | x meanP | 1000x1000 scoring (s) | x meanP | achieved GFLOP/s | of matmul peak |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_params'] / 1e6:.2f} | {r['forward_gflops_per_clip']:.2f} | "
            f"{r['forward_gflops_per_clip'] / base['forward_gflops_per_clip']:.2f} | {r['train_step_s']:.2f} | "
            f"{r['train_step_s'] / base['train_step_s']:.2f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} | {r['scoring_1000x1000_s']:.3g}"
            f"{'' if r['scoring_rows_measured'] >= 1000 else ' (from ' + str(r['scoring_rows_measured']) + ' rows)'} | "
            f"{r['scoring_1000x1000_s'] / base['scoring_1000x1000_s']:.3g} | {r['achieved_gflops']:.1f} | "
            f"{r['achieved_gflops'] / peak:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--batch", type=int, default=4, help="clips per training step (>= 2: a contrastive batch)")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps (the median is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one method, print JSON
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "efficiency.json"))
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.one, args.batch, args.frames, args.words, args.pairs, args.steps)))
        return 0
    peak = matmul_peak_gflops()
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--one", method, "--batch", str(args.batch), "--frames", str(args.frames),
               "--words", str(args.words), "--pairs", str(args.pairs), "--steps", str(args.steps),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(f"{method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{method}: step {rows[-1]['train_step_s']:.2f} s, scoring {rows[-1]['scoring_1000x1000_s']:.3g} s",
              flush=True)
    print(f"\nfloat32 matmul peak (2048^2, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s\n")
    print(table(rows, peak))
    write_result({"benchmark": "efficiency", "machine": machine_info(threads=torch.get_num_threads()),
                  "settings": {k: getattr(args, k) for k in ("batch", "frames", "words", "pairs", "steps")},
                  "matmul_peak_gflops": peak, "rows": rows, "command": " ".join(["python", *sys.argv])},
                 args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
