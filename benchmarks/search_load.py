"""Load test of the search server: ``serve`` (waitress) on loopback, many clients at once.

A 10k-video index (random L2-normalised 512-d embeddings, as in search_latency.py) is served by
``python -m clip4clip.search serve`` in its own process, with a ViT-B/32-shaped text tower
(12 layers, width 512, CLIP's BPE, random weights: the real cost of encoding a query) saved as
a CLIP weights file. ``--clients`` threads each send ``--queries`` different queries to
``/api/search`` (k=10) over one keep-alive connection, as fast as the answers come; every
query is distinct, so nothing is cached. Reported per server setting: throughput, latency
percentiles (p50, p95, p99, max) and errors (non-200 answers and failed connections; must be 0).
Bounded: a request that takes longer than ``--timeout`` seconds counts as an error.

    python benchmarks/search_load.py [--clients 16] [--queries 100] [--threads 2 4 8] [--videos 10000]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from clip4clip.clip import CLIP, CLIPConfig  # noqa: E402
from clip4clip.search import Encoder  # noqa: E402
from search_latency import DIM, QUERIES, write_index  # noqa: E402

BPE = REPO.parent / "shared" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


def make_index(work: Path, n: int) -> Path:
    """A CLIP weights file with ViT-B/32's text tower and an index of ``n`` videos for it."""
    cfg = CLIPConfig(embed_dim=DIM, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12)
    torch.manual_seed(0)
    weights = work / "vit-b-32-text.pt"
    torch.save(CLIP(cfg).state_dict(), weights)
    encoder = Encoder.load(str(weights), bpe_vocab=str(BPE) if BPE.is_file() else None)
    write_index(work / "index", n, encoder)
    return work / "index"


def start_server(index: Path, threads: int, torch_threads: int):
    """``serve`` in a subprocess on a free loopback port -> (process, port)."""
    cmd = [sys.executable, "-m", "clip4clip.search", "serve", "--index", str(index), "--port", "0",
           "--threads", str(threads), "--torch-threads", str(torch_threads)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    while line and "serving" not in line:
        line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    return proc, port


def client(port: int, queries, timeout: float, out: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    for q in queries:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": q, "k": 10}))
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200 and len(json.loads(body)["results"]) == 10
        except Exception:  # noqa: BLE001 - counted as an error; reconnect for the next one
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        out.append((time.perf_counter() - t0, ok))
    conn.close()


def load(port: int, clients: int, queries: int, timeout: float) -> dict:
    results = [[] for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(port, [f"{QUERIES[(c * queries + i) % len(QUERIES)]} {c} {i}"
                                                             for i in range(queries)], timeout, results[c]))
               for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for r in results for x, _ in r]) * 1000
    errors = sum(not ok for r in results for _, ok in r)
    return {"requests": int(len(lat)), "errors": int(errors), "wall_s": round(wall, 1),
            "throughput_qps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1), "mean_ms": round(float(statistics.fmean(lat)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--queries", type=int, default=100, help="per client")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8], help="server worker threads to try")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads of the server")
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as an error")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_load.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="search-load-") as work:
        index = make_index(Path(work), args.videos)
        for threads in args.threads:
            proc, port = start_server(index, threads, args.torch_threads)
            try:
                load(port, 2, 5, args.timeout)  # warm-up: first requests load lazily
                row = {"server_threads": threads, "torch_threads": args.torch_threads, "clients": args.clients,
                       "queries_per_client": args.queries, **load(port, args.clients, args.queries, args.timeout)}
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'threads':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}")
    for r in rows:
        print(f"{r['server_threads']:>7} {r['requests']:>8} {r['errors']:>6} {r['throughput_qps']:>7.1f} "
              f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f}")
    result = {"command": "python benchmarks/search_load.py " + " ".join(sys.argv[1:]), "videos": args.videos,
              "rows": rows, "server": "waitress (python -m clip4clip.search serve)",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "load_average_before": os.getloadavg()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
