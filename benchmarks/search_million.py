"""Search a million videos: FAISS (IVF + 8-bit codes, re-ranked exactly in float32) against exact search.

Realistic embeddings, not uniform random ones (those have no cluster structure, the worst case
for any index: search_latency.py measured recall@10 of 0.11 on them):

1. a trained model (``--checkpoint``, default the demo run) encodes the synthetic clips of its
   dataset (their video embeddings, exactly as the index stores them) and the test captions;
2. a Gaussian mixture is fitted to the video embeddings (``--components`` k-means clusters,
   each with its weight, mean and per-dimension standard deviation);
3. N videos are sampled from the mixture, lifted from the model's width to 512-d (ViT-B/32's) by
   a random orthonormal map, plus isotropic noise in all 512 dimensions (``--noise``: its share of
   the within-cluster variance), and L2-normalised;
4. queries are the model's text embeddings of the test captions, lifted by the same map.

Each size is written as a real index folder (1 frame embedding per video) with its FAISS file,
opened with ``SearchIndex`` (backend 'auto' picks FAISS from ``ann.AUTO_FAISS_VIDEOS`` videos on)
and ranked through ``SearchIndex.rank``, the code path of the CLI and the web page. Recall@10
is against exact float32 search over the same vectors. Text encoding is timed apart, for the
model's text tower and for ViT-B/32's (random weights: the same cost as the released one).

    python benchmarks/search_million.py [--checkpoint RUN] [--sizes 100000 1000000] [--queries 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from clip4clip.search import Encoder, SearchIndex  # noqa: E402
from clip4clip.search import ann  # noqa: E402
from search_latency import vit_b32_text_encoder, write_index  # noqa: E402

DIM = 512


def encode_library(encoder: Encoder, videos: Path, limit: int, cache: Path) -> np.ndarray:
    """Video embeddings [M, d] of the clips in ``videos`` (cached in ``cache``)."""
    if cache.is_file():
        return np.load(cache)
    from data.video.decode import read_frames
    s = encoder.sampling
    paths = sorted(videos.glob("*.mp4"))[:limit]
    out = []
    for i in range(0, len(paths), 64):
        clips = [read_frames(p, s.fps, s.max_frames, s.slice_framepos)[0] for p in paths[i:i + 64]]
        out.append(encoder.encode_videos(clips))
        print(f"  encoded {min(i + 64, len(paths))}/{len(paths)} clips", flush=True)
    emb = np.concatenate(out)
    np.save(cache, emb)
    return emb


class Mixture:
    """A Gaussian mixture (diagonal covariances) fitted to ``emb`` by k-means, lifted to DIM."""

    def __init__(self, emb: np.ndarray, components: int, noise: float, seed: int = 0):
        import faiss
        d = emb.shape[1]
        km = faiss.Kmeans(d, components, niter=25, seed=seed, spherical=True)
        km.train(np.ascontiguousarray(emb, dtype=np.float32))
        _, assign = km.index.search(np.ascontiguousarray(emb, dtype=np.float32), 1)
        assign = assign[:, 0]
        self.weights = np.bincount(assign, minlength=components).astype(np.float64)
        self.weights /= self.weights.sum()
        self.means = np.stack([emb[assign == c].mean(0) if (assign == c).any() else km.centroids[c]
                               for c in range(components)]).astype(np.float32)
        self.stds = np.stack([emb[assign == c].std(0) if (assign == c).sum() > 1 else emb.std(0) * 0.5
                              for c in range(components)]).astype(np.float32)
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((DIM, d)))
        self.lift = q.astype(np.float32)  # [DIM, d], orthonormal columns
        within = float(np.mean((self.stds ** 2).sum(1)))
        self.noise_std = float(np.sqrt(noise * within / DIM))
        self.components = components

    def sample(self, n: int, seed: int, chunk: int = 100_000):
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            c = rng.choice(self.components, size=m, p=self.weights)
            x = self.means[c] + self.stds[c] * rng.standard_normal((m, self.means.shape[1]), dtype=np.float32)
            y = x @ self.lift.T + self.noise_std * rng.standard_normal((m, DIM), dtype=np.float32)
            yield (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)

    def queries(self, text_emb: np.ndarray) -> np.ndarray:
        y = text_emb.astype(np.float32) @ self.lift.T
        return y / np.linalg.norm(y, axis=1, keepdims=True)


def exact_top(emb: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Rows of the k best of float32 ``emb`` for each query (ties by row), chunked."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(emb), chunk):
        s = queries @ np.asarray(emb[start:start + chunk], dtype=np.float32).T
        r = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        s, r = np.concatenate([best_s, s], 1), np.concatenate([best_r, r], 1)
        order = np.lexsort((r, -s), axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
    return best_r


def timed_queries(fn, queries) -> tuple:
    """(median ms, p95 ms, results) of fn(q) per query."""
    times, out = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), float(np.percentile(times, 95)), out


def recall(results, truth, k: int) -> float:
    return float(np.mean([len({r for _, r in res[:k]} & set(t[:k].tolist())) / k for res, t in zip(results, truth)]))


def bench_size(n: int, mix: Mixture, queries: np.ndarray, encoder: Encoder, work: Path, nprobes, k: int,
               kinds, hnsw_max: int, exact_queries: int) -> dict:
    folder = work / f"index-{n}"
    t0 = time.perf_counter()
    version = write_index(folder, n, encoder, vectors=mix.sample(n, seed=1), frames_per_video=1)
    row = {"videos": n, "write_index_s": round(time.perf_counter() - t0, 1)}
    emb = np.load(version / "video_emb.npy", mmap_mode="r")
    t0 = time.perf_counter()
    truth = exact_top(emb, queries, k)
    row["ground_truth_s"] = round(time.perf_counter() - t0, 1)

    exact = SearchIndex.open(folder, encoder=encoder, backend="exact")
    few = queries[:exact_queries]  # each streams the whole float32 matrix: a few give the median
    med, p95, res = timed_queries(lambda q: exact.rank(q, k), few)
    row["exact"] = {"rank_ms": round(med, 2), "p95_ms": round(p95, 2), "queries": len(few),
                    "recall_at_10": round(recall(res, truth, k), 4), "memory_bytes_per_video": DIM * 4}
    exact.close()
    exact = None  # frees its 2 GB in-memory matrix before FAISS is built
    row["faiss"] = []
    for kind in kinds:
        if kind == "hnsw" and n > hnsw_max:
            continue  # its build inserts one row at a time: hours for 1M on 2 cores
        t0 = time.perf_counter()
        index = ann.build_faiss_index(emb, kind=kind)  # nlist and training sample: ann's defaults
        build_s = time.perf_counter() - t0
        ann.save_faiss_index(index, version / "videos.faiss")
        size = (version / "videos.faiss").stat().st_size
        del index
        chosen = SearchIndex.open(folder, encoder=encoder, backend="auto")
        auto_backend = chosen.backend  # what the CLI and the page would use for this library
        chosen.close()
        del chosen
        auto = SearchIndex.open(folder, encoder=encoder, backend="faiss")
        settings = nprobes if kind.startswith("ivf") else [None]
        for nprobe in settings:
            if nprobe is not None:
                auto._faiss.nprobe = nprobe
            med, p95, res = timed_queries(lambda q: auto.rank(q, k), queries)
            entry = {"kind": kind, "faiss_class": type(auto._faiss).__name__, "nprobe": nprobe,
                     "nlist": getattr(auto._faiss, "nlist", None), "rerank": ann.RERANK_CANDIDATES,
                     "auto_backend": auto_backend, "rank_ms": round(med, 2), "p95_ms": round(p95, 2),
                     "recall_at_10": round(recall(res, truth, k), 4), "build_s": round(build_s, 1),
                     "faiss_bytes_per_video": round(size / n, 1)}
            row["faiss"].append(entry)
            print("   ", json.dumps(entry), flush=True)
        auto.close()
        auto = None
    return row


def text_timing(encoder: Encoder, texts) -> dict:
    out = {}
    for name, enc in (("model", encoder), ("vit_b32", vit_b32_text_encoder())):
        enc.encode_texts(texts[:2])
        med, p95, _ = timed_queries(lambda t: enc.encode_texts([t]), texts[:50])
        out[name] = {"median_ms": round(med, 1), "p95_ms": round(p95, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "outputs" / "demo"), help="trained run or checkpoint")
    ap.add_argument("--videos", help="clips to fit the mixture to (default: the checkpoint's dataset videos)")
    ap.add_argument("--clips", type=int, default=4000, help="at most this many clips are encoded")
    ap.add_argument("--components", type=int, default=256)
    ap.add_argument("--noise", type=float, default=0.5, help="isotropic noise variance / within-cluster variance")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--kinds", nargs="+", default=["ivf_sq8"], help="FAISS index kinds (ivf_sq8 ivf_flat hnsw)")
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="build HNSW only up to this many videos")
    ap.add_argument("--exact-queries", type=int, default=20, help="queries timed for exact search")
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (1: see benchmarks/README.md)")
    ap.add_argument("--work", help="folder for the indexes and the embedding cache (default: a temp folder)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_million.json"))
    args = ap.parse_args()
    import faiss
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    encoder = Encoder.load(args.checkpoint)
    if args.videos:
        videos = Path(args.videos)
    else:
        from data.splits import dataset_root
        dcfg = encoder.train_config["dataset"]
        videos = dataset_root(dcfg, progress=False) / str(dcfg.get("video_dir") or "videos")
    captions_csv = videos.parent / "MSRVTT_JSFUSION_test.csv"
    import csv
    with open(captions_csv, newline="", encoding="utf-8") as f:
        texts = [r["sentence"] for r in csv.DictReader(f)]
    tmp = tempfile.TemporaryDirectory(prefix="search-million-") if not args.work else None
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    clips = encode_library(encoder, videos, args.clips, work / f"clips-{encoder.fingerprint}.npy")
    mix = Mixture(clips, args.components, args.noise)
    queries = mix.queries(encoder.encode_texts(texts[:args.queries]))
    print(f"fitted {args.components} components to {len(clips)} clips ({clips.shape[1]}-d) in "
          f"{time.perf_counter() - t0:.0f} s; {len(queries)} caption queries", flush=True)
    result = {"command": "python benchmarks/search_million.py " + " ".join(sys.argv[1:]),
              "checkpoint": str(args.checkpoint), "clips": int(len(clips)), "model_dim": int(clips.shape[1]),
              "components": args.components, "noise": args.noise, "queries": int(len(queries)),
              "text_encode": text_timing(encoder, texts), "rows": []}
    print("text encoding:", json.dumps(result["text_encode"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        print(f"{n} videos ...", flush=True)
        result["rows"].append(bench_size(n, mix, queries, encoder, work, args.nprobe, 10, args.kinds,
                                         args.hnsw_max, args.exact_queries))
        result["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
        result["machine"] = {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                             "python": platform.python_version(), "torch": torch.__version__,
                             "faiss": faiss.__version__, "load_average": os.getloadavg()}
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every size: a long run keeps its rows
    print(f"\n{'videos':>9} {'backend':>26} {'rank ms':>8} {'p95 ms':>7} {'recall@10':>9} {'build s':>8} {'B/video':>8}")
    for r in result["rows"]:
        print(f"{r['videos']:>9} {'exact float32':>26} {r['exact']['rank_ms']:>8.2f} {r['exact']['p95_ms']:>7.2f} "
              f"{r['exact']['recall_at_10']:>9.3f} {'-':>8} {DIM * 4:>8}")
        for f in r["faiss"]:
            name = f"{f['kind']} nprobe={f['nprobe']}" if f["nprobe"] else f["kind"]
            print(f"{r['videos']:>9} {name:>26} {f['rank_ms']:>8.2f} {f['p95_ms']:>7.2f} {f['recall_at_10']:>9.3f} "
                  f"{f['build_s']:>8.1f} {f['faiss_bytes_per_video']:>8.0f}")
    print(f"written {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
