"""Command line: ``python -m clip4clip.search index|merge|search|serve ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

from ..core.errors import UserError

SPLITS = ("train", "val", "test")
#: Most frames of a video embedding (--max-frames) when the head has no position table to say
#: it: twice the longest sampling of our dataset configs (64); each frame is padded into every
#: clip of a batch (16 clips x 128 frames x 224 px x 3 x float32 = 1.2 GB), and 100000 frames
#: padded one 32 px clip to 1.1 GiB.
MAX_FRAMES = 128
#: Most moment frames per video (--moment-frames): decoded and kept at once (1024 x 224 px:
#: 154 MB of uint8).
MAX_MOMENT_FRAMES = 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clip4clip.search",
                                description="Index a video library, search it by text, browse it in a web page.")
    sub = p.add_subparsers(dest="command", required=True)

    ix = sub.add_parser("index", help="build or update an index (incremental, resumable)")
    ix.add_argument("--checkpoint", required=True,
                    help="our checkpoint or run folder, an official CLIP4Clip checkpoint, or a CLIP name (ViT-B/32)")
    ix.add_argument("--videos", help="library folder (nested folders are walked); default for our "
                                     "checkpoints: the videos of the dataset they were trained on")
    ix.add_argument("--split", choices=SPLITS,
                    help="index only the videos of this split of the checkpoint's dataset (e.g. test: the "
                         "videos its reported metrics rank; train and test captions repeat each other)")
    ix.add_argument("--out", required=True, help="index folder (created, or updated if it exists)")
    ix.add_argument("--fps", type=float, help="video-embedding frames per second (default: the checkpoint's)")
    ix.add_argument("--max-frames", type=int, help=f"video-embedding frames (default: the checkpoint's; <= {MAX_FRAMES})")
    ix.add_argument("--moment-fps", type=float, default=1.0, help="frames per second scored for the best moment")
    ix.add_argument("--moment-frames", type=int, default=64,
                    help=f"at most this many moment frames per video (1..{MAX_MOMENT_FRAMES})")
    ix.add_argument("--proxies", choices=("auto", "off"), default="auto",
                    help="auto: make a playback copy (H.264 MP4) of videos browsers cannot play (AVI, MKV, mp4v)")
    ix.add_argument("--faiss", nargs="?", const="yes", choices=("auto", "yes", "no"), default="auto",
                    help="also build a FAISS index (needs faiss-cpu); auto: from 100k videos on, when installed")
    ix.add_argument("--shard", metavar="I/N",
                    help="index only slice I of N (0-based) of the library into a partial index --out; "
                         "combine the N partial indexes with 'merge'")
    ix.add_argument("--rebuild", action="store_true", help="re-encode everything, even with another model")
    ix.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ix.add_argument("--threads", type=int, help="torch CPU threads (1: fastest on a busy machine; 0: torch's default)")
    ix.add_argument("--bpe-vocab", help="CLIP's BPE vocabulary file (CLIP checkpoints; default: cache/download)")
    ix.add_argument("--no-progress", action="store_true")

    mg = sub.add_parser("merge", help="merge the partial indexes of 'index --shard I/N' into one index")
    mg.add_argument("--out", required=True, help="index folder (created, or updated if it exists)")
    mg.add_argument("partials", nargs="+", help="the --out folders of every shard")
    mg.add_argument("--faiss", nargs="?", const="yes", choices=("auto", "yes", "no"), default="auto")

    se = sub.add_parser("search", help="search an index from the command line")
    se.add_argument("--index", required=True)
    se.add_argument("query", help="what happens in the video, e.g. 'a man is cooking'")
    se.add_argument("-k", type=int, default=10, help="number of results")
    se.add_argument("--json", action="store_true", help="print JSON instead of a table")
    se.add_argument("--captions", action="store_true", help="also show the caption-match (FTS5) results")
    se.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    _common(se)

    sv = sub.add_parser("serve", help="serve the search web page (waitress)")
    sv.add_argument("--index", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port, 1..65535 (0: any free port, printed)")
    sv.add_argument("--threads", type=int, default=None,
                    help="worker threads answering requests (default 4; see benchmarks/README.md, search load)")
    sv.add_argument("--torch-threads", type=int, default=1,
                    help="torch CPU threads per query (default 1: the worker threads run queries in "
                         "parallel, and intra-op threads competing with them for the cores slow every query; "
                         "0: torch's default)")
    sv.add_argument("--library", help="where the videos are now, if the library moved since indexing")
    _common(sv)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "exact", "faiss"), default="auto",
                   help="exact (float32 scan), faiss (an index built with --faiss) or auto (default: faiss "
                        "from 100k videos on, when the index has it)")
    p.add_argument("--checkpoint", help="the model file, if it moved since indexing (its fingerprint is checked)")
    p.add_argument("--device", default="cpu")


def _need(ok: bool, option: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{option} {value}: expected {expected}")


def _check_values(args) -> None:
    """The numbers of the command line, before any is used: ValueError naming the option
    (NaN passed ``<= 0``, --port 70000 listened on 4464, --threads -1 raised in torch)."""
    for name in ("fps", "moment_fps"):
        value = getattr(args, name, None)
        _need(value is None or (math.isfinite(value) and value > 0), _option(name), value, "a finite number > 0")
    for name, high in (("max_frames", MAX_FRAMES), ("moment_frames", MAX_MOMENT_FRAMES)):
        value = getattr(args, name, None)
        _need(value is None or 1 <= value <= high, _option(name), value, f"a number of frames 1..{high}")
    for name in ("threads", "torch_threads"):
        value = getattr(args, name, None)
        if args.command == "serve" and name == "threads":  # waitress's workers: None means 4
            _need(value is None or value >= 1, "--threads", value, "a number of worker threads >= 1")
        else:
            _need(value is None or value >= 0, _option(name), value, "a number of threads >= 1 (0: torch's default)")
    if args.command == "serve":
        _need(0 <= args.port <= 65535, "--port", args.port, "a TCP port 1..65535 (0: any free port)")
    if args.command == "search":
        _need(args.k >= 1, "-k", args.k, "a number of results >= 1")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_head_frames(encoder, args) -> None:
    """--max-frames within the head's position table (seqTransf, tightTransf), if it has one."""
    limit = encoder.model.head.max_frames
    if args.max_frames is not None and limit is not None and args.max_frames > limit:
        raise ValueError(f"--max-frames {args.max_frames}: the {encoder.model.head.name} head of {args.checkpoint} "
                         f"takes at most {limit} frames (its position table)")


def _about(e: OSError, out: Path) -> bool:
    """Whether ``e`` is about --out: a file in it, or a folder above it (being created). A
    write that fills the disk often names no file."""
    if not isinstance(e.filename, (str, bytes, os.PathLike)):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    # Both resolved, as the indexer resolves --out.
    path, out = Path(os.path.realpath(os.fsdecode(e.filename))), Path(os.path.realpath(out))
    return path == out or path.is_relative_to(out) or out.is_relative_to(path)


#: OS errors of writing somewhere the user can change (permissions, read-only, full, missing).
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                 errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP}


@contextlib.contextmanager
def _writing_out(out: Path) -> Iterator[None]:
    """Failures to write the index folder --out (read-only, disk full) as one-line errors
    naming it; ``user_errors`` does not take a bare OSError for a problem the user can fix. (A
    folder that is not an index and a second indexer are the store's own user errors.)"""
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS or not _about(e, out):
            raise
        reason = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror
        raise ValueError(f"--out {out}: cannot write {e.filename or out}: {reason}") from None


def _faiss(value: str) -> Optional[bool]:
    return {"auto": None, "yes": True, "no": False}[value]


def _dataset_cfg(encoder) -> dict:
    cfg = encoder.train_config
    if not cfg or not cfg.get("dataset"):
        raise ValueError("--videos is required for this checkpoint (it does not name the dataset it was trained on)")
    return cfg["dataset"]


def _default_library(encoder) -> Path:
    """The video folder of the dataset an our-checkpoint was trained on."""
    from data.splits import dataset_root
    dcfg = _dataset_cfg(encoder)
    root = dataset_root(dcfg)
    folder = root / str(dcfg.get("video_dir") or "")
    print(f"indexing the videos of the checkpoint's dataset ({dcfg.get('name')}): {folder}", flush=True)
    return folder


def _shard(value: Optional[str]):
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard {value!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {value}: expected 0 <= I < N")
    return i, n


def _index(args) -> int:
    from .encoder import Encoder
    from .indexer import build_index
    from .library import split_video_ids, video_key
    shard = _shard(args.shard)
    encoder = Encoder.load(args.checkpoint, fps=args.fps, max_frames=args.max_frames, moment_fps=args.moment_fps,
                           moment_frames=args.moment_frames, device=args.device, bpe_vocab=args.bpe_vocab)
    _check_head_frames(encoder, args)
    if encoder.device.type == "cpu":
        from ..core.cpu_memory import keep_freed_memory
        keep_freed_memory()  # each batch's freed memory serves the next (no page faults; same embeddings)
    videos = Path(args.videos) if args.videos else _default_library(encoder)
    only = None
    if args.split:
        ids = set(split_video_ids(_dataset_cfg(encoder), args.split))
        print(f"indexing the {len(ids)} videos of the {args.split} split", flush=True)
        only = lambda rel: video_key(rel) in ids  # noqa: E731
    with _writing_out(Path(args.out)):
        report = build_index(videos, Path(args.out), encoder, proxies=args.proxies, faiss=_faiss(args.faiss),
                             rebuild=args.rebuild, progress=not args.no_progress, only=only, shard=shard)
    print(report.summary(), flush=True)
    if report.failed and report.num_videos == 0:
        print("error: no video could be indexed", file=sys.stderr)
        return 1
    return 0


def _merge(args) -> int:
    from .indexer import merge_indexes
    with _writing_out(Path(args.out)):
        report = merge_indexes([Path(p) for p in args.partials], Path(args.out), faiss=_faiss(args.faiss))
    print(report.summary(), flush=True)
    return 0


def _format_table(hits) -> str:
    from .web import mmss
    lines = [f"{'rank':>4}  {'score':>7}  {'moment':>8}  {'segment':>15}  path"]
    for h in hits:
        missing = "  (file missing)" if not h.available else ""
        segment = f"{mmss(h.start)}-{mmss(h.end)}"
        lines.append(f"{h.rank:>4}  {h.score:>7.4f}  {mmss(h.moment):>8}  {segment:>15}  {h.path}{missing}")
    return "\n".join(lines)


def cut_note(used) -> Optional[str]:
    """The line telling that a query was cut to the model's text length, or None."""
    if not used.truncated:
        return None
    return (f"note: the model reads at most {used.max_tokens} tokens of a query; only the first {used.tokens} "
            f"were used: {used.used_text!r}")


def _search(args) -> int:
    from .query import SearchIndex
    index = SearchIndex.open(args.index, checkpoint=args.checkpoint, backend=args.backend, device=args.device)
    result = index.search_full(args.query, args.k)
    hits = result.hits
    captions = index.caption_search(args.query, args.k) if args.captions else None
    note = cut_note(result.text)
    if note:
        print(note, file=sys.stderr)
    if args.json:
        out = {"query": args.query, "k": args.k, "query_used": result.text.to_dict(),
               "results": [h.to_dict() for h in hits]}
        if captions is not None:
            out["caption_matches"] = [c.to_dict() for c in captions]
        print(json.dumps(out, indent=2))
        return 0
    print(_format_table(hits) if hits else "the index holds no videos")
    if captions is not None:
        print("\ncaption match (FTS5 BM25):" if index.has_captions else "\nthis index holds no captions")
        for c in captions:
            print(f"{c.rank:>4}  {c.score:>7.2f}  {c.path}  {c.caption}")
    return 0


def _serve(args) -> int:
    from .query import SearchIndex
    from .web import DEFAULT_THREADS, make_server
    index = SearchIndex.open(args.index, checkpoint=args.checkpoint, backend=args.backend, device=args.device,
                             library=args.library)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can search the "
              "library and play its videos", file=sys.stderr)
    threads = args.threads or DEFAULT_THREADS
    server = make_server(index, args.host, args.port, threads)
    print(f"serving {index.num_videos} videos from {index.path} at http://{args.host}:{server.effective_port}/ "
          f"(waitress, {threads} threads, {index.backend} search)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from ..core.errors import user_errors
    with user_errors():
        _check_values(args)
        torch_threads = args.torch_threads if args.command == "serve" else getattr(args, "threads", None)
        if torch_threads:
            import torch
            torch.set_num_threads(torch_threads)
        return {"index": _index, "merge": _merge, "search": _search, "serve": _serve}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
