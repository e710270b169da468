"""A seed sweep as one table: every test metric of the runs as mean ± std (sample std, n-1), min
and max, beside the published figure when known -> ``seeds.md``, ``seeds.json`` and
``seeds_r1.png`` (t2v R@1: validation per epoch and the test value, one line per seed).

``python train.py --multirun seed=1,2,3 +experiment=NAME`` writes them into the sweep folder
when the sweep ends (``SeedTableCallback``, registered under ``hydra.callbacks`` in
configs/train.yaml). To (re)build them from run folders that exist::

    python -m clip4clip.engine.seed_table SWEEP_DIR | RUN_DIR ... [--published t2v.R1=44.5 ...] [--out DIR]

Runs without metrics.json or without its 'test' (failed, killed, still running), and seeds the
sweep named (its multirun.yaml) that have no folder, are listed as missing, never dropped.
Published figures: ``published:`` in the run's config (an experiment's, e.g.
``published: {t2v: {R1: 44.5}}``, ``{dsl: {t2v: {R1: ...}}}`` for a post-processing method),
or ``--published``, which wins.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml
from hydra.experimental.callback import Callback

from ..core.atomic import atomic_write, atomic_write_text

METRICS = ("R1", "R5", "R10", "MdR", "MnR")
DIRECTIONS = ("t2v", "v2t")
TABLE, DATA, PLOT = "seeds.md", "seeds.json", "seeds_r1.png"
_NO_MATPLOTLIB = (f"{PLOT} not written: matplotlib is not installed "
                  "(pip install -e '.[plots]', or matplotlib itself)")


@dataclass
class Run:
    """One job of the sweep: its folder (None: the sweep named the seed but it has no folder)."""
    label: str
    folder: Optional[Path]
    seed: Optional[int] = None
    reason: Optional[str] = None  # why it is missing; None: finished
    values: Dict[str, float] = field(default_factory=dict)  # "t2v.R1", "dsl.t2v.R1" -> value
    history: List[tuple] = field(default_factory=list)  # (epoch, validation t2v R@1)
    best_epoch: Optional[int] = None
    overrides: Optional[List[str]] = None
    published: Optional[Mapping] = None

    @property
    def finished(self) -> bool:
        return self.reason is None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None where a level is missing or not a mapping."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _metric_values(block: Any, prefix: str = "") -> Dict[str, float]:
    """{t2v: {R1: ...}, v2t: {...}} -> {"<prefix>t2v.R1": ...} for the metrics of the table."""
    out = {}
    for d in DIRECTIONS:
        for m in METRICS:
            v = _number(_get(block, d, m))
            if v is not None:
                out[f"{prefix}{d}.{m}"] = v
    return out


def read_run(folder: Path, label: str) -> Run:
    """A run folder's seed, overrides, published figures and test metrics (or why there are none)."""
    config = _read_yaml(folder / "config.yaml") or _read_yaml(folder / ".hydra" / "config.yaml") or {}
    seed = config.get("seed") if isinstance(config, Mapping) else None
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        seed = None
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
    run = Run(label, folder, seed, overrides=overrides if isinstance(overrides, list) else None,
              published=config.get("published") if isinstance(config, Mapping) else None)
    path = folder / "metrics.json"
    if not path.is_file():
        run.reason = "no metrics.json: the run failed, was stopped or has not finished"
        return run
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        run.reason = f"metrics.json unreadable ({e})"
        return run
    run.values = _metric_values(metrics.get("test")) if isinstance(metrics, Mapping) else {}
    if not run.values:
        run.reason = "metrics.json has no test metrics: the run did not finish"
        return run
    for method, block in (_get(metrics, "test_postprocessed") or {}).items():
        run.values.update(_metric_values(block, f"{method}."))
    for record in metrics.get("history") or []:
        r1, epoch = _number(_get(record, "val", "t2v", "R1")), _number(_get(record, "epoch"))
        if r1 is not None and epoch is not None:
            run.history.append((int(epoch), r1))
    best = _number(metrics.get("best_epoch"))
    run.best_epoch = int(best) if best is not None else None
    return run


def _is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("metrics.json", "config.yaml", ".hydra"))


def _sweep_seeds(sweep: Path) -> List[int]:
    """The seeds a sweep's command named (``seed=1,2,3``, ``seed=range(1,4)``; multirun.yaml)."""
    task = _get(_read_yaml(sweep / "multirun.yaml"), "hydra", "overrides", "task")
    if not isinstance(task, list):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    for text in task:
        try:
            override = parser.parse_override(str(text))
            if override.get_key_element() == "seed" and override.is_sweep_override():
                return [int(s) for s in override.sweep_string_iterator()]
        except Exception:  # an override this reader cannot expand: no expected seeds from it
            continue
    return []


def collect_runs(paths: Sequence[Path]) -> List[Run]:
    """Runs of sweep folders (each subfolder holding a run) and of run folders, in order; a
    sweep's seeds that have no folder are added as missing."""
    runs: List[Run] = []
    seen = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a folder (expected a sweep folder or a run folder)")
        if _is_run_folder(path):
            found = [(path, str(path))]
        else:
            subs = sorted((p for p in path.iterdir() if p.is_dir() and _is_run_folder(p)),
                          key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
            if not subs and not (path / "multirun.yaml").is_file():
                raise FileNotFoundError(f"{path} holds no run folder (one with metrics.json, config.yaml or "
                                        ".hydra/) and no multirun.yaml: not a sweep folder")
            found = [(p, p.name if len(paths) == 1 else str(p)) for p in subs]
        sweep_runs = []
        for folder, label in found:
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                sweep_runs.append(read_run(folder, label))
        if not _is_run_folder(path):
            present = {r.seed for r in sweep_runs}
            sweep_runs += [Run(f"seed={s}", None, s, reason="no run folder: the sweep stopped before this job ran")
                           for s in _sweep_seeds(path) if s not in present]
        runs += sweep_runs
    return runs


def _metric_key(name: str, where: str, value: Any) -> str:
    parts = name.split(".")
    if len(parts) not in (2, 3) or parts[-2] not in DIRECTIONS or parts[-1] not in METRICS or _number(value) is None:
        raise ValueError(f"{where}: {name}={value!r}; expected [method.]t2v|v2t.METRIC=NUMBER with METRIC one "
                         f"of {', '.join(METRICS)} (e.g. t2v.R1=44.5, dsl.t2v.R1=49.4)")
    return name


def flatten_published(published: Any, where: str = "published") -> Dict[str, float]:
    """``{t2v: {R1: 44.5}, dsl: {t2v: {R1: 49.4}}}`` (or already flat) ->
    ``{"t2v.R1": 44.5, "dsl.t2v.R1": 49.4}``."""
    if published is None:
        return {}
    if not isinstance(published, Mapping):
        raise ValueError(f"{where} must be a mapping like {{t2v: {{R1: 44.5}}}}, not {published!r}")
    out = {}
    for key, block in published.items():
        if block is None:  # null: not published (an experiment blanks what its base experiment gives)
            continue
        if not isinstance(block, Mapping):  # flat: "t2v.R1": 44.5
            out[_metric_key(str(key), where, block)] = float(block)
            continue
        prefix, block = ("", {key: block}) if key in DIRECTIONS else (f"{key}.", block)
        for d, values in block.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"{where}: {prefix}{d} must map metrics to numbers, not {values!r}")
            for m, v in values.items():
                if v is not None:  # null: not published
                    out[_metric_key(f"{prefix}{d}.{m}", where, v)] = float(v)
    return out


def _headers(runs: Sequence[Run]) -> Dict[str, str]:
    """Column names: 'seed N' where the seed names one run, else the folder."""
    seeds = [r.seed for r in runs]
    return {r.label: f"seed {r.seed}" if r.seed is not None and seeds.count(r.seed) == 1
            else (r.label if r.seed is None else f"{r.label} (seed {r.seed})") for r in runs}


def aggregate(runs: Sequence[Run], published: Optional[Mapping] = None) -> Dict[str, Any]:
    """The table as data: per metric n, mean, std (n-1; None under 2 runs), min, max, the
    published figure and every run's value. ``published`` (flat or nested) wins over the runs' own."""
    done = [r for r in runs if r.finished]
    own = next((r.published for r in done if r.published), None) or \
        next((r.published for r in runs if r.published), None)
    figures = {**flatten_published(own, "published (the runs' config)"), **flatten_published(published, "--published")}
    names: List[str] = []
    for r in done:
        names += [k for k in r.values if k not in names]
    sets = ["test"] + [n.split(".")[0] for n in names if n.count(".") == 2]  # plain first, then methods
    names.sort(key=lambda k: (sets.index(k.split(".")[0] if k.count(".") == 2 else "test"),
                              DIRECTIONS.index(k.split(".")[-2]), METRICS.index(k.split(".")[-1])))
    metrics = {}
    for name in names:
        vals = {r.label: r.values[name] for r in done if name in r.values}
        xs = list(vals.values())
        metrics[name] = {"n": len(xs), "mean": statistics.fmean(xs),
                         "std": statistics.stdev(xs) if len(xs) >= 2 else None,
                         "min": min(xs), "max": max(xs), "published": figures.get(name), "values": vals}
    runs_out = [{"label": r.label, "folder": str(r.folder) if r.folder else None, "seed": r.seed,
                 "status": "finished" if r.finished else "missing", "reason": r.reason,
                 "best_epoch": r.best_epoch} for r in runs]
    lists = [r.overrides for r in runs if r.overrides is not None]
    strip = [[o for o in ov if not o.lstrip("+~").startswith(("seed=", "hydra.", "paths.output_dir="))]
             for ov in lists]
    common = [o for o in (strip[0] if strip else []) if all(o in s for s in strip)]
    differ = sorted({o for s in strip for o in s if o not in common})
    return {"runs": runs_out, "finished": len(done), "missing": len(runs) - len(done), "metrics": metrics,
            "published": figures, "unmatched_published": sorted(set(figures) - set(metrics)),
            "overrides": common, "overrides_differ": differ}


def _label(name: str) -> str:
    parts = name.split(".")
    metric = parts[-1].replace("R", "R@", 1) if parts[-1][1:].isdigit() else parts[-1]
    return " ".join([*parts[:-1], metric])


def _f(v: Optional[float], digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_markdown(table: Mapping, runs: Sequence[Run], title: str) -> str:
    heads = _headers(runs)
    done = [r for r in runs if r.finished]
    missing = [r for r in runs if not r.finished]
    lines = [f"# Seed sweep: {title}", "",
             f"{len(runs)} runs: {len(done)} finished"
             + (f" ({', '.join(heads[r.label] for r in done)})" if done else "")
             + (f", {len(missing)} missing ({', '.join(heads[r.label] for r in missing)})" if missing else "")
             + ". Test metrics of each run's tested checkpoint (metrics.json 'test'; post-processed: "
               "'test_postprocessed'); std is the sample standard deviation (n-1), n/a under 2 runs.", ""]
    if table["overrides"]:
        lines += ["Overrides of every run: `" + " ".join(table["overrides"]) + "`", ""]
    if table["overrides_differ"]:
        lines += ["**The runs differ in more than the seed:** `" + " ".join(table["overrides_differ"]) + "`", ""]
    cols = ["metric", "mean ± std", "published", "min", "max", "n", *(heads[r.label] for r in runs)]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, row in table["metrics"].items():
        std = "n/a" if row["std"] is None else f"{row['std']:.2f}"
        cells = [_label(name), f"{row['mean']:.1f} ± {std}", _f(row["published"]), _f(row["min"]),
                 _f(row["max"]), str(row["n"]),
                 *(("missing" if not r.finished else _f(row["values"].get(r.label))) for r in runs)]
        lines.append("| " + " | ".join(cells) + " |")
    if not table["metrics"]:
        lines.append("| (no finished run) |" + " |" * (len(cols) - 1))
    if missing:
        lines += ["", "Missing (not in the statistics):"]
        lines += [f"- {heads[r.label]}" + (f" (`{r.label}`)" if r.folder else "") + f": {r.reason}"
                  for r in missing]
    if table["unmatched_published"]:
        lines += ["", "Published but not measured: " + ", ".join(table["unmatched_published"])]
    return "\n".join(lines) + "\n"


def plot_r1(runs: Sequence[Run], path: Path, title: str) -> Optional[str]:
    """t2v R@1 per epoch (validation) and the test value at the tested epoch, one colour per
    run. -> None when written, else why not (matplotlib missing, nothing to draw)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return _NO_MATPLOTLIB
    done = [r for r in runs if r.finished]
    if not done:
        return f"{PLOT} not written: no finished run"
    heads = _headers(runs)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    epochs = set()
    for i, run in enumerate(done):
        c = colours[i % len(colours)]
        if run.history:
            ax.plot(*zip(*run.history), marker="o", markersize=3, color=c, label=heads[run.label])
        test = run.values.get("t2v.R1")
        x = run.best_epoch or (run.history[-1][0] if run.history else 1)
        epochs.update([x, *(e for e, _ in run.history)])
        ax.plot([x], [test], marker="*", markersize=13, linestyle="none", color=c,
                **({} if run.history else {"label": heads[run.label]}))
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", markersize=11, linestyle="none", color="black",
                          label="test (at the tested epoch)"))
    ax.legend(handles=handles, fontsize=8)
    missing = [heads[r.label] for r in runs if not r.finished]
    ax.set_title(f"{title}: t2v R@1, validation per epoch and test"
                 + (f"\nmissing: {', '.join(missing)}" if missing else ""), fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_ylabel("t2v R@1 (%)")
    lo, hi = int(min(epochs)), int(max(epochs))
    ax.set_xlim(lo - 0.5, hi + 0.5)
    if hi - lo <= 25:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    return None


def write_seed_table(paths: Sequence[Path], out: Optional[Path] = None,
                     published: Optional[Mapping] = None) -> Dict[str, Any]:
    """Collect the runs, write seeds.md, seeds.json and seeds_r1.png (atomically) into ``out``
    (default: the folder holding the runs) -> the table, with 'files' and 'plot_note'."""
    paths = [Path(p) for p in paths]
    runs = collect_runs(paths)
    if not runs:
        raise FileNotFoundError(f"no run folder in {', '.join(map(str, paths))}")
    if out is None and len(paths) == 1 and not _is_run_folder(paths[0]):
        out = paths[0]  # a sweep folder
    elif out is None:
        parents = {r.folder.resolve().parent for r in runs if r.folder}
        if len(parents) != 1:
            raise ValueError("the runs are in different folders: say where the table goes with --out DIR")
        out = parents.pop()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(runs, published)
    folder = paths[0].resolve().name if len(paths) == 1 else out.resolve().name
    experiment = next((o.split("=", 1)[1] for o in table["overrides"] if o.lstrip("+").startswith("experiment=")), None)
    title = f"{experiment} ({folder})" if experiment else folder
    note = plot_r1(runs, out / PLOT, title)
    table.update(plot=None if note else PLOT, plot_note=note)
    atomic_write_text(out / TABLE, format_markdown(table, runs, title))
    atomic_write_text(out / DATA, json.dumps(table, indent=2) + "\n")
    table["files"] = [str(out / name) for name in (TABLE, DATA, PLOT) if name != PLOT or not note]
    return table


def _report(table: Mapping) -> str:
    return (f"seed table: {table['finished']} finished, {table['missing']} missing -> "
            + ", ".join(table["files"]) + (f"\n{table['plot_note']}" if table["plot_note"] else ""))


class SeedTableCallback(Callback):
    """``hydra.callbacks`` entry of configs/train.yaml: when a ``--multirun`` ends, the seed table
    of its jobs in ``hydra.sweep.dir``. (A job that fails stops Hydra's sweep before this is
    called: rebuild the table with ``python -m clip4clip.engine.seed_table SWEEP_DIR``.)"""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        print(_report(write_seed_table([sweep], out=sweep)), flush=True)


def _published_arg(text: str) -> tuple:
    key, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    try:
        return _metric_key(key, "--published", value if number is None else number), number
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip4clip.engine.seed_table",
                                     description="Gather a seed sweep's test metrics into seeds.md, seeds.json "
                                                 "and seeds_r1.png (mean ± sample std, min, max, published).")
    parser.add_argument("paths", nargs="+", type=Path, help="a --multirun sweep folder, or run folders")
    parser.add_argument("--published", nargs="+", type=_published_arg, default=[], metavar="KEY=VALUE",
                        help="published figures, e.g. t2v.R1=44.5 v2t.R1=42.7 dsl.t2v.R1=49.4 "
                             "(override the runs' config 'published')")
    parser.add_argument("--out", type=Path, help="folder for the three files (default: the runs' folder)")
    args = parser.parse_args(argv)
    try:
        table = write_seed_table(args.paths, args.out, dict(args.published))
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_report(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
