"""Runs command-line probes (tests/malformed_corpus.py) in forked children, each under a memory
limit and a timeout, and records how each ended.

    python tests/probe_driver.py PROBES.json RESULTS.json [--jobs N]

PROBES.json: a list of {"name", "entry", "argv", "cwd", "env"}; entry is one of ENTRIES. The driver
imports torch and the entry points once; each probe is a fork of it (a fresh interpreter per
probe would spend ~3 s importing torch, for hundreds of probes). A child gets

* ``RLIMIT_AS``: the driver's address space at fork plus ``--memory-mb`` (so an allocation of
  gigabytes fails at once instead of swapping the machine; the failure then shows as a
  MemoryError traceback, which the test counts as a failed probe), and
* a wall-clock limit (``--timeout``): a probe still running then is killed and reported as a
  hang.

RESULTS.json: name -> {"rc", "stderr" (last 4000 characters), "seconds", "peak_rss_mb"
(the child's peak resident set growth over the driver's, in MiB), "timed_out"}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENTRIES = ("evaluate", "train", "search", "export", "extract_frames")


def _entry(name: str):
    """A function running the entry point with ``sys.argv``. The scripts run as ``__main__``
    (Hydra finds their configs relative to the script file only then)."""
    if name in ("evaluate", "train", "extract_frames"):
        import runpy
        script = str(REPO / f"{name}.py")
        return lambda: runpy.run_path(script, run_name="__main__")
    if name == "search":
        from clip4clip.search.__main__ import main
        return lambda: main(sys.argv[1:])
    if name == "export":
        from clip4clip.weights.export import main
        return lambda: main(sys.argv[1:])
    raise ValueError(f"unknown entry {name!r}; expected one of {ENTRIES}")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _vm_bytes() -> int:
    return _status_kib("VmSize") * 1024


def _child(probe: dict, log: Path, memory_mb: int) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        limit = _vm_bytes() + memory_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        os.chdir(probe.get("cwd") or REPO)
        main = _entry(probe["entry"])
        sys.argv = [probe["entry"], *probe["argv"]]
        os.environ["CLIP4CLIP_TRACEBACK"] = ""
        os.environ.update(probe.get("env") or {})
        try:
            result = main()
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(probes, out_dir: Path, jobs: int, timeout: float, memory_mb: int) -> dict:
    # The driver's resident size now (KiB), not its ru_maxrss: Linux carries ru_maxrss across
    # exec, so it would hold the peak of the pytest process that started the driver.
    base_rss = _status_kib("VmRSS")
    results, running, todo = {}, {}, list(probes)
    while todo or running:
        while todo and len(running) < jobs:
            probe = todo.pop(0)
            log = out_dir / f"{len(probes) - len(todo):05d}.log"
            pid = os.fork()
            if pid == 0:
                _child(probe, log, memory_mb)
            running[pid] = (probe, log, time.monotonic())
        time.sleep(0.02)
        for pid, (probe, log, t0) in list(running.items()):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            timed_out = False
            if done == 0:
                if time.monotonic() - t0 < timeout:
                    continue
                os.kill(pid, signal.SIGKILL)
                done, status, usage = os.wait4(pid, 0)
                timed_out = True
            del running[pid]
            rc = os.waitstatus_to_exitcode(status)
            results[probe["name"]] = {"rc": rc, "stderr": log.read_text(errors="replace")[-4000:],
                                      "seconds": round(time.monotonic() - t0, 2), "timed_out": timed_out,
                                      "peak_rss_mb": round(max(usage.ru_maxrss - base_rss, 0) / 1024, 1)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("probes")
    ap.add_argument("results")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--memory-mb", type=int, default=1536)
    args = ap.parse_args()
    import torch  # noqa: F401  (imported once, before forking)
    torch.set_num_threads(1)
    import clip4clip.engine.evaluate_job  # noqa: F401  (what the scripts import, imported before forking)
    import clip4clip.engine.train_job  # noqa: F401
    import hydra  # noqa: F401
    for name in ENTRIES:
        _entry(name)
    probes = json.loads(Path(args.probes).read_text())
    out_dir = Path(args.results).with_suffix(".logs")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _run(probes, out_dir, args.jobs, args.timeout, args.memory_mb)
    Path(args.results).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
