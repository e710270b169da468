"""Benchmark search latency: one query = text encoding + ranking (+ best moments of the hits).

Libraries of random L2-normalised 512-d video embeddings (10k and 1M by default; 4 frame
embeddings per video for the best moment) are written as real index folders, opened with
``SearchIndex`` and queried through ``SearchIndex.search``: the code path of the CLI and the
web page. The text tower has ViT-B/32's shape (12 layers, width 512, CLIP's BPE) with random
weights: its cost is the real one, no download needed.

Backends: exact (float16 matrix-vector product + top-k, the default) and FAISS (IndexFlatIP
below 50k videos, IndexIVFFlat above, several ``nprobe``), with recall@10 of FAISS against
exact search over random query vectors: the worst case for clustering, as random library
vectors have no cluster structure; real embeddings cluster, so recall there is higher.

    python benchmarks/search_latency.py [--sizes 10000 1000000] [--queries 50] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clip4clip.clip import CLIP, CLIPConfig  # noqa: E402
from clip4clip.model import CLIP4Clip  # noqa: E402
from clip4clip.search import Encoder, Sampling, SearchIndex  # noqa: E402
from clip4clip.search import store  # noqa: E402
from clip4clip.search.ann import build_faiss_index, faiss_available, faiss_search  # noqa: E402
from clip4clip.search.encoder import model_fingerprint  # noqa: E402
from clip4clip.tokenizer import ClipTokenizer  # noqa: E402

DIM = 512
FRAMES_PER_VIDEO = 4
QUERIES = ["a man is cooking in a kitchen", "two people arm wrestling at a table", "a dog runs on the beach",
           "someone cleans a swimming pool", "a woman applies eye makeup", "cars racing on a track"]


def vit_b32_text_encoder() -> Encoder:
    """ViT-B/32-shaped CLIP (random weights) with CLIP's tokenizer, as an Encoder."""
    cfg = CLIPConfig(embed_dim=DIM, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12)
    torch.manual_seed(0)
    model = CLIP4Clip.from_clip(CLIP(cfg), "meanP")
    bpe = REPO.parent / "shared" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    tokenizer = ClipTokenizer(vocab_path=str(bpe) if bpe.is_file() else None)
    sampling = Sampling(1.0, 12, "uniform", 1.0, FRAMES_PER_VIDEO, 224)
    return Encoder(model, tokenizer, 32, sampling, model_fingerprint(model, None),
                   {"checkpoint": "random ViT-B/32 text tower", "kind": "benchmark", "head": "meanP"})


def random_unit(rng, n: int, chunk: int = 100_000):
    """float32 [n, DIM] unit vectors, made in chunks to bound memory."""
    for start in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - start), DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def write_index(folder: Path, n: int, encoder: Encoder, seed: int = 0, vectors=None,
                frames_per_video: int = FRAMES_PER_VIDEO, dim: int = DIM) -> Path:
    """An index folder of ``n`` videos, written with the store's own helpers: ``vectors`` (float32
    [*, dim] unit-row chunks, ``n`` rows in all) or random unit vectors, and ``frames_per_video``
    frame embeddings near each video's."""
    rng = np.random.default_rng(seed)
    build = store.new_build_dir(folder)
    vw = store.ArrayWriter(build / "video_emb.npy", dim, np.float32)  # the store's format: float32 videos
    fw = store.ArrayWriter(build / "frame_emb.npy", dim)
    fpv = frames_per_video
    for x in (vectors if vectors is not None else random_unit(rng, n)):
        vw.append(x)
        # Frame embeddings near their video's (what a real index holds).
        frames = np.repeat(x, fpv, axis=0) + 0.1 * rng.standard_normal((len(x) * fpv, dim), dtype=np.float32)
        fw.append(frames / np.linalg.norm(frames, axis=1, keepdims=True))
    vw.close()
    fw.close()
    db = store.create_db(build / "meta.sqlite")
    times = json.dumps([float(t) for t in range(fpv)])
    db.executemany("INSERT INTO videos VALUES (?, ?, ?, 0, 0, ?, 1.0, 320, 240, ?, ?, ?, ?, 'original', '')",
                   ((i + 1, i, f"v/{i}.mp4", float(fpv), fpv, i * fpv, fpv, times) for i in range(n)))
    store.write_meta(db, {"format": store.FORMAT, "fingerprint": encoder.fingerprint, "model": encoder.description,
                          "sampling": encoder.sampling.to_dict(), "library": str(folder), "num_videos": n,
                          "next_id": n + 1})
    db.commit()
    db.close()
    return store.publish(folder, build)


def _flat(emb: np.ndarray):
    import faiss
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    return flat


def timed(fn, repeat: int):
    """(median seconds, result of the last call)."""
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_size(n: int, encoder: Encoder, work: Path, queries: int, nprobes, k: int = 10) -> dict:
    folder = work / f"index-{n}"
    t0 = time.perf_counter()
    version = write_index(folder, n, encoder)
    row = {"videos": n, "write_index_s": round(time.perf_counter() - t0, 1)}
    index = SearchIndex.open(folder, encoder=encoder, backend="exact")
    texts = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(queries)]
    encode_s, _ = timed(lambda: [encoder.encode_texts([t]) for t in texts], 1)
    row["text_encode_ms"] = round(1000 * encode_s / len(texts), 2)
    qvecs = np.concatenate(list(random_unit(np.random.default_rng(1), queries)))
    rank_s, exact = timed(lambda: [index.search_embedding(q, k) for q in qvecs], 1)
    row["exact_rank_ms"] = round(1000 * rank_s / queries, 2)
    total_s, _ = timed(lambda: [index.search(t, k) for t in texts], 1)
    row["exact_total_ms"] = round(1000 * total_s / queries, 2)
    exact_ids = [{h.id for h in hits} for hits in exact]

    if faiss_available():
        emb = np.load(version / "video_emb.npy").astype(np.float32)
        t0 = time.perf_counter()
        fidx = build_faiss_index(emb)
        row["faiss_build_s"] = round(time.perf_counter() - t0, 1)
        row["faiss_kind"] = type(fidx).__name__
        row["faiss"] = []
        if hasattr(fidx, "nprobe"):  # also FAISS's own exact scan (float32 BLAS), for comparison
            flat = build_faiss_index(emb, nlist=None) if n < 50_000 else _flat(emb)
            single_s, _ = timed(lambda: [faiss_search(flat, q[None], k) for q in qvecs], 1)
            row["faiss"].append({"nprobe": None, "rank_ms": round(1000 * single_s / queries, 2),
                                 "total_ms": round(row["text_encode_ms"] + 1000 * single_s / queries, 2),
                                 "recall_at_10": 1.0, "kind": "IndexFlatIP"})
            del flat
        del emb
        for nprobe in (nprobes if hasattr(fidx, "nprobe") else [None]):
            search_s, (_, rows) = timed(lambda: faiss_search(fidx, qvecs, k, nprobe=nprobe), 1)
            # One query at a time, as the web page sends them.
            single_s, _ = timed(lambda: [faiss_search(fidx, q[None], k, nprobe=nprobe) for q in qvecs], 1)
            recall = np.mean([len(exact_ids[i] & {int(r) + 1 for r in rows[i]}) / k for i in range(queries)])
            row["faiss"].append({"nprobe": nprobe, "rank_ms": round(1000 * single_s / queries, 2),
                                 "total_ms": round(row["text_encode_ms"] + 1000 * single_s / queries, 2),
                                 "recall_at_10": round(float(recall), 3), "kind": type(fidx).__name__})
    index.close()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--threads", type=int, help="torch/FAISS threads (default: the libraries' own)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_latency.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        if faiss_available():
            import faiss
            faiss.omp_set_num_threads(args.threads)
    encoder = vit_b32_text_encoder()
    rows = []
    with tempfile.TemporaryDirectory(prefix="search-bench-") as work:
        for n in args.sizes:
            print(f"{n} videos ...", flush=True)
            rows.append(bench_size(n, encoder, Path(work), args.queries, args.nprobe))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'videos':>9} {'backend':>14} {'encode ms':>10} {'rank ms':>9} {'total ms':>9} {'recall@10':>10}")
    for r in rows:
        print(f"{r['videos']:>9} {'exact':>14} {r['text_encode_ms']:>10.1f} {r['exact_rank_ms']:>9.1f} "
              f"{r['exact_total_ms']:>9.1f} {1.0:>10.3f}")
        for f in r.get("faiss", []):
            name = f"faiss np={f['nprobe']}" if f["nprobe"] else "faiss flat"
            print(f"{r['videos']:>9} {name:>14} {r['text_encode_ms']:>10.1f} {f['rank_ms']:>9.1f} "
                  f"{f['total_ms']:>9.1f} {f['recall_at_10']:>10.3f}")
    result = {"command": "python benchmarks/search_latency.py " + " ".join(sys.argv[1:]), "rows": rows,
              "faiss": faiss_available(), "torch_threads": torch.get_num_threads(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
