"""Training and encoding throughput of CLIP4Clip across precision / memory / compile modes.

For each mode: clips/s, step time and peak memory of the real training step (the engine's
ContrastiveStep + AdamW + grad clipping, uint8 frames copied from pinned memory and
normalised on the device); the model FLOPs per clip (counted, forward + backward) and the
model FLOPs utilisation (MFU) against a peak that is given (--peak-tflops) or measured (a
bf16 matmul on CUDA, float32 on CPU). Then evaluation encoding throughput (videos/s, texts/s)
and, with --loader, what the default data loader delivers. Each mode runs in its own process,
so peak memory is per mode and an out-of-memory mode does not stop the others.

    # the tiny CPU figures of benchmarks/README.md
    python benchmarks/train_throughput.py --backbone tiny --frames 4 --batch 32 --threads 1
    # the GPU target: ViT-B/32, 12 frames, batch 128 (random weights: speed does not depend on them)
    python benchmarks/train_throughput.py --backbone ViT-B/32 --frames 12 --batch 128 --loader

Modes are '+'-joined: a precision (fp32 | bf16 | fp16) and any of compile, ckpt (activation
checkpointing), chunk (gradient-cache loss in chunks of --chunk clips).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clip4clip.clip import CLIP, CLIPConfig  # noqa: E402
from clip4clip.engine.optim import build_optimizer  # noqa: E402
from clip4clip.engine.precision import autocast, grad_scaler  # noqa: E402
from clip4clip.engine.step import ContrastiveStep, batch_to_device  # noqa: E402
from clip4clip.model import CLIP4Clip  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _report import machine_info, write_result  # noqa: E402

# name -> (CLIPConfig fields, max_words). tiny = configs/model/tiny.yaml.
BACKBONES = {
    "tiny": (dict(embed_dim=128, image_resolution=32, vision_layers=4, vision_width=128, vision_patch_size=8,
                  vision_heads=4, context_length=16, vocab_size=1000, transformer_width=128,
                  transformer_heads=4, transformer_layers=2), 16),
    "ViT-B/32": (dict(), 32),
    "ViT-B/16": (dict(vision_patch_size=16), 32),
}
DEFAULT_MODES = {"cuda": "fp32,bf16,bf16+compile,bf16+ckpt,bf16+chunk,bf16+ckpt+chunk",
                 "cpu": "fp32,bf16,fp32+ckpt,fp32+chunk"}  # inductor on a small CPU takes minutes


def parse_mode(mode: str) -> dict:
    parts = mode.split("+")
    if parts[0] not in ("fp32", "bf16", "fp16") or not set(parts[1:]) <= {"compile", "ckpt", "chunk"}:
        raise SystemExit(f"bad mode {mode!r}: a precision (fp32|bf16|fp16) then any of +compile +ckpt +chunk")
    return {"precision": parts[0], "compile": "compile" in parts, "ckpt": "ckpt" in parts, "chunk": "chunk" in parts}


def build_model(args, device) -> CLIP4Clip:
    torch.manual_seed(0)
    arch, _ = BACKBONES[args.backbone]
    clip = CLIP(CLIPConfig(**arch))
    head_kwargs = {"num_blocks": 4} if args.head in ("seqTransf", "frameweight") else {}
    return CLIP4Clip.from_clip(clip, args.head, init_head_from_clip=False, **head_kwargs).to(device)


def host_batch(args, n: int) -> dict:
    """What the loader hands over: uint8 frames and token ids, pinned on CUDA machines."""
    arch, words = BACKBONES[args.backbone]
    config = CLIPConfig(**arch)
    size, vocab = config.image_resolution, config.vocab_size
    ids = torch.randint(1, vocab - 2, (n, words))
    ids[:, 0], ids[:, -1] = vocab - 2, vocab - 1  # start / end of text (the highest id, where CLIP pools)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "video": torch.randint(0, 256, (n, args.frames, 3, size, size), dtype=torch.uint8),
             "video_mask": torch.ones(n, args.frames, dtype=torch.long)}
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(args, mode: str) -> dict:
    """One mode, timed; run inside its own process (see main)."""
    device, m = torch.device(args.device), parse_mode(mode)
    model = build_model(args, device)
    model.clip.set_grad_checkpointing(m["ckpt"])
    if m["compile"]:
        model.compile()
    opt = build_optimizer(model, lr=1e-5, fused=device.type == "cuda")
    scaler = grad_scaler(device, m["precision"])
    step = ContrastiveStep(model, device=device, precision=m["precision"], scaler=scaler,
                           chunk_size=args.chunk if m["chunk"] else 0)
    host = host_batch(args, args.batch)
    params = [p for g in opt.param_groups for p in g["params"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = _rss_gb()
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        batch = batch_to_device(host, device)           # as Trainer.train_step
        opt.zero_grad(set_to_none=True)
        loss = step(batch)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{mode}: non-finite loss")
    step_s = statistics.median(times)
    if device.type == "cuda":  # weights, optimiser state, activations: all the step needs
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:  # the process's RSS high-water mark above its size before the first step
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20 - base_rss
    return {"mode": mode, "step_s": step_s, "clips_per_s": args.batch / step_s, "peak_mem_gb": peak}


def _rss_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (OSError, ValueError):
        return 0.0


def flops_per_clip(args, device) -> float:
    """Model FLOPs of one training clip, forward + backward, counted by PyTorch's dispatcher
    (matmuls, convolutions, attention), float32, no recomputation: the work that MFU credits."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model, n = build_model(args, device), 2
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # attention as plain matmuls, which are counted
        ContrastiveStep(model, device=device)(batch_to_device(host_batch(args, n), device))
    return counter.get_total_flops() / n


def activation_gb_per_clip(args, ckpt: bool) -> float:
    """Bytes autograd keeps for backward per training clip (bf16 autocast, on CPU), counted
    with saved-tensor hooks over distinct storages, parameters excluded. With this, the GPU
    memory of a step can be estimated where no GPU is at hand (see estimate_memory)."""
    device, n = torch.device("cpu"), 2
    model = build_model(args, device)
    model.clip.set_grad_checkpointing(ckpt)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    b = batch_to_device(host_batch(args, n), device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, "bf16"):
        model(b["input_ids"], b["attention_mask"], b["video"], b["video_mask"])
    return sum(seen.values()) / n / 2 ** 30


def estimate_memory(args) -> dict:
    """Estimated GPU memory (GB) of a bf16 step: float32 weights + gradients + AdamW's two
    moments (16 bytes/parameter) plus the activations of the clips in flight at once (the
    batch, or one chunk with the gradient cache), with and without activation checkpointing
    (then: the saved block inputs plus one block recomputed during backward). Allocator
    overhead and temporary buffers are not included."""
    model = build_model(args, torch.device("cpu"))
    params = sum(p.numel() for p in model.parameters())
    layers = max(model.clip.config.vision_layers, model.clip.config.transformer_layers)
    static = params * 16 / 2 ** 30
    full, kept = activation_gb_per_clip(args, False), activation_gb_per_clip(args, True)
    per_clip = {"": full, "_ckpt": kept + (full - kept) / layers}
    out = {"params": params, "static_gb": static, "activation_gb_per_clip": full,
           "activation_gb_per_clip_ckpt": per_clip["_ckpt"]}
    for tag, act in per_clip.items():
        out[f"batch{tag}_gb"] = static + act * args.batch
        out[f"chunk{tag}_gb"] = static + act * min(args.chunk, args.batch)
    return out


def measure_peak(device, threads) -> tuple:
    """Dense matmul FLOP/s: bf16 8192^3 on CUDA (tensor cores), float32 1024^3 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = (20 if device.type == "cuda" else 5), time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0), f"measured {dtype} {n}^3 matmul"


@torch.no_grad()
def encode_throughput(args, device, precision: str) -> dict:
    """Evaluation encoding: videos/s and texts/s, eval mode, batches of --eval-batch."""
    model = build_model(args, device).eval()
    host = host_batch(args, args.eval_batch)
    out = {"precision": precision}
    for kind in ("video", "text"):
        times = []
        for i in range(args.warmup + args.steps):
            sync(device)
            t0 = time.perf_counter()
            b = batch_to_device(host, device)
            with autocast(device, precision):
                if kind == "video":
                    model.encode_video(b["video"], b["video_mask"])
                else:
                    model.encode_text(b["input_ids"])
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        out[f"{kind}s_per_s"] = args.eval_batch / statistics.median(times)
    return out


def loader_throughput(args) -> dict:
    """Clips/s that the training DataLoader delivers with trainer.num_workers=auto on the
    synthetic dataset (uint8 frames, as with normalize_on_device), to compare with training."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from clip4clip.engine.tokenize_collate import TokenizeCollate
    from data.splits import build_split, dataset_root
    from clip4clip.engine.train_job import resolve_workers
    from clip4clip.tokenizer import WordTokenizer
    arch, words = BACKBONES[args.backbone]
    size = CLIPConfig(**arch).image_resolution
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        need = args.batch * (args.loader_batches + 1)
        cfg = compose("train", ["dataset=synthetic", f"dataset.generator.num_train={need}", "dataset.generator.num_val=8",
                                "dataset.generator.num_test=8", f"dataset.max_frames={args.frames}", "dataset.fps=2",
                                "dataset.cache_frames=false", "paths.output_dir=/tmp"])
    dcfg = {**OmegaConf.to_container(cfg.dataset, resolve=True), "normalize": False}
    ds = build_split(dcfg, dataset_root(dcfg, progress=False), "train", size, 0, progress=False)
    tok = WordTokenizer.build([c for caps in ds.captions.values() for c in caps])
    workers = resolve_workers("auto")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                         collate_fn=TokenizeCollate(tok, words), drop_last=True,
                                         pin_memory=args.device.startswith("cuda"), persistent_workers=workers > 0)
    it, n, t0 = iter(loader), 0, None
    for i in range(1 + args.loader_batches):
        batch = next(it)
        if i == 0:
            t0 = time.perf_counter()  # after start-up
        else:
            n += batch["video"].shape[0]
    return {"workers": workers, "clips_per_s": n / (time.perf_counter() - t0), "dataset": "synthetic (64 px source)"}


def machine(device) -> dict:
    return machine_info(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="tiny")
    ap.add_argument("--head", default="meanP")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=32, help="gradient-cache chunk (clips) of the +chunk modes")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--modes", default=None, help="comma-separated; default depends on the device")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: measured)")
    ap.add_argument("--loader", action="store_true", help="also measure the default data loader")
    ap.add_argument("--loader-batches", type=int, default=10)
    ap.add_argument("--estimate-memory", action="store_true",
                    help="also estimate the GPU memory of bf16 steps from activations counted on CPU")
    ap.add_argument("--only-estimate", action="store_true", help="the memory estimate alone (no timing)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one-mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.one_mode:  # child process: one mode, result on the last line
        try:
            result = run_mode(args, args.one_mode)
        except torch.cuda.OutOfMemoryError:
            result = {"mode": args.one_mode, "error": "out of memory"}
        print("RESULT " + json.dumps(result))
        return 0

    if args.only_estimate:
        est = estimate_memory(args)
        _print_estimate(args, est)
        _write(args, device, {"memory_estimate": est})
        return 0
    modes = (args.modes or DEFAULT_MODES[device.type]).split(",")
    for m in modes:
        parse_mode(m)
    rows = []
    for mode in modes:
        child = [sys.executable, __file__, *sys.argv[1:], "--one-mode", mode]
        proc = subprocess.run(child, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("RESULT ")), None)
        rows.append(json.loads(line[7:]) if line else {"mode": mode, "error": proc.stderr.strip().splitlines()[-1:]})
        print(f"  {mode}: {rows[-1]}", flush=True)

    flops = flops_per_clip(args, device)
    peak, source = ((args.peak_tflops * 1e12, "given") if args.peak_tflops else measure_peak(device, args.threads))
    for r in rows:
        if "clips_per_s" in r:
            r["mfu"] = flops * r["clips_per_s"] / peak
    precisions = sorted({parse_mode(m)["precision"] for m in modes})
    encode = [encode_throughput(args, device, p) for p in precisions]
    loader = loader_throughput(args) if args.loader else None
    est = estimate_memory(args) if args.estimate_memory else None

    print(f"\n{args.backbone}, {args.frames} frames, batch {args.batch} on {args.device} "
          f"({machine(device).get('gpu', platform.processor() or 'cpu')}); model FLOPs/clip (fwd+bwd) "
          f"{flops / 1e9:.3g} G; peak {peak / 1e12:.3g} TFLOP/s ({source})")
    mem_label = "peak mem (GB)" if device.type == "cuda" else "step RSS (GB)"
    print(f"{'mode':<22}{'clips/s':>10}{'step (ms)':>11}{mem_label:>15}{'MFU':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<22}{'error: ' + str(r['error']):>44}")
            continue
        mem = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
        print(f"{r['mode']:<22}{r['clips_per_s']:>10.1f}{r['step_s'] * 1e3:>11.1f}{mem:>15}{r['mfu'] * 100:>7.1f}%")
    for e in encode:
        print(f"encode ({e['precision']}): {e['videos_per_s']:.1f} videos/s, {e['texts_per_s']:.1f} texts/s")
    if loader:
        print(f"loader (num_workers=auto={loader['workers']}): {loader['clips_per_s']:.1f} clips/s")
    if est:
        _print_estimate(args, est)
    _write(args, device, {"flops_per_clip": flops, "peak_flops": peak, "peak_source": source, "modes": rows,
                          "encode": encode, "loader": loader, "memory_estimate": est})
    return 0


def _print_estimate(args, est: dict) -> None:
    print(f"estimated bf16 step memory, {est['params'] / 1e6:.1f}M parameters ({est['static_gb']:.2f} GB static), "
          f"{args.frames} frames: batch {args.batch} {est['batch_gb']:.1f} GB, +ckpt {est['batch_ckpt_gb']:.1f} GB; "
          f"chunks of {args.chunk}: {est['chunk_gb']:.1f} GB, +ckpt {est['chunk_ckpt_gb']:.1f} GB")


def _write(args, device, fields: dict) -> None:
    name = f"train_throughput_{device.type}_{args.backbone.replace('/', '-')}.json"
    out = Path(args.out or REPO / "benchmarks" / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
              "machine": machine(device), "args": vars(args), **fields, "date": time.strftime("%Y-%m-%d")}
    write_result(result, out)


if __name__ == "__main__":
    sys.exit(main())
