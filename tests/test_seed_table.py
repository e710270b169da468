"""Seed sweeps -> one table (clip4clip/engine/seed_table.py): the statistics on hand-written run
folders, missing runs, published figures, the command line, and one real --multirun whose
Hydra callback writes seeds.md / seeds.json / seeds_r1.png into the sweep folder."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from clip4clip.engine import seed_table
from clip4clip.engine.seed_table import collect_runs, main, write_seed_table
from framework_utils import REPO, tiny_train_overrides

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _metrics(r1, shift=0.0):
    """A direction's metrics: R@1 given, the rest derived from it."""
    return {"R1": r1, "R5": r1 + 20 + shift, "R10": r1 + 30, "MdR": 2.0 + shift, "MnR": 15.0 - r1 / 10,
            "std": 1.0, "num_queries": 1000}


def _run(folder, seed, t2v_r1=None, test=True, post=None, published=None, extra=(), history=None):
    """A run folder as train.py leaves it: config.yaml, .hydra/overrides.yaml, metrics.json
    (t2v_r1=None: no metrics.json, the run failed; test=False: metrics.json without 'test')."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "published": published}))
    (folder / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"seed={seed}", "+experiment=demo", *extra, f"hydra.sweep.dir={folder.parent}"]))
    if t2v_r1 is None:
        return folder
    history = history if history is not None else [
        {"epoch": 1, "step": 3, "train_loss": 2.0}, {"epoch": 2, "step": 6, "val": {"t2v": _metrics(t2v_r1 - 5)}}]
    metrics = {"history": history, "best_epoch": 2}
    if test:
        metrics.update(test={"t2v": _metrics(t2v_r1), "v2t": _metrics(t2v_r1 - 2, shift=1.0)},
                       test_postprocessed=post or {})
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def _sample_stats(xs):
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)), min(xs), max(xs)


@pytest.fixture
def sweep(tmp_path):
    """Seeds 1-3 finished (seed 2 also with DSL), 4 failed (no metrics.json), 5 stopped before
    its test, 6 named by the sweep's command but never started."""
    root = tmp_path / "sweep"
    pub = {"t2v": {"R1": 44.5, "MnR": 15.3}, "dsl": {"t2v": {"R1": 49.4}}}
    _run(root / "0", 1, 40.0, published=pub)
    _run(root / "1", 2, 43.5, post={"dsl": {"t2v": _metrics(47.0), "v2t": _metrics(46.0)}}, published=pub)
    _run(root / "2", 3, 41.2, published=pub)
    _run(root / "3", 4, published=pub)
    _run(root / "4", 5, 39.0, test=False, published=pub)
    (root / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["seed=range(1,7)", "+experiment=demo"]}}, "seed": 42}))
    return root


def test_statistics_missing_runs_and_published_figures(sweep):
    table = write_seed_table([sweep])
    assert (table["finished"], table["missing"]) == (3, 3)
    rows = table["metrics"]
    # every plain test metric of both directions, then the post-processed ones (only seed 2 has them)
    assert list(rows)[:10] == [f"{d}.{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MdR", "MnR")]
    assert set(list(rows)[10:]) == {f"dsl.{d}.{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MdR", "MnR")}
    for name, xs in {"t2v.R1": [40.0, 43.5, 41.2], "t2v.MnR": [11.0, 10.65, 10.88],
                     "v2t.R5": [59.0, 62.5, 60.2], "v2t.MdR": [3.0, 3.0, 3.0]}.items():
        mean, std, lo, hi = _sample_stats(xs)
        row = rows[name]
        assert row["n"] == 3 and row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(std)
        assert (row["min"], row["max"]) == (pytest.approx(lo), pytest.approx(hi))
        assert row["values"] == {"0": pytest.approx(xs[0]), "1": pytest.approx(xs[1]), "2": pytest.approx(xs[2])}
    assert rows["t2v.R1"]["std"] == pytest.approx(1.7785762095938, rel=1e-9)  # stdev([40, 43.5, 41.2])
    dsl = rows["dsl.t2v.R1"]
    assert dsl["n"] == 1 and dsl["mean"] == 47.0 and dsl["std"] is None  # one run: no std
    # published figures (the experiment's `published:`), nested per method, beside the mean
    assert rows["t2v.R1"]["published"] == 44.5 and rows["t2v.MnR"]["published"] == 15.3
    assert dsl["published"] == 49.4 and rows["t2v.R5"]["published"] is None

    status = {r["seed"]: (r["status"], r["reason"]) for r in table["runs"]}
    assert [s for s, (st, _) in status.items() if st == "missing"] == [4, 5, 6]
    assert "no metrics.json" in status[4][1] and "no test metrics" in status[5][1]
    assert "no run folder" in status[6][1]
    assert table["overrides"] == ["+experiment=demo"] and table["overrides_differ"] == []

    md = (sweep / "seeds.md").read_text()
    assert "| metric | mean ± std | published | min | max | n | seed 1 | seed 2 | seed 3 | seed 4 | seed 5 | seed 6 |" in md
    mean, std, lo, hi = _sample_stats([40.0, 43.5, 41.2])
    assert f"| t2v R@1 | {mean:.1f} ± {std:.2f} | 44.5 | {lo:.1f} | {hi:.1f} | 3 | 40.0 | 43.5 | 41.2 | missing | missing | missing |" in md
    assert "| dsl t2v R@1 | 47.0 ± n/a | 49.4 |" in md
    assert "Missing (not in the statistics):" in md and "- seed 4 (`" in md and "- seed 6: no run folder" in md
    assert json.loads((sweep / "seeds.json").read_text())["metrics"]["t2v.R1"]["mean"] == pytest.approx(mean)
    assert (sweep / "seeds_r1.png").is_file() == HAVE_MATPLOTLIB
    # atomic writes leave no temporary files behind
    assert not [p.name for p in sweep.iterdir() if ".tmp-" in p.name]


def test_one_finished_run_has_no_std_and_differing_overrides_are_flagged(tmp_path):
    root = tmp_path / "s"
    _run(root / "0", 1, 30.0)
    _run(root / "1", 2, extra=["optim.lr=1e-3"])  # failed, and not the same command
    table = write_seed_table([root])
    assert table["metrics"]["t2v.R1"]["std"] is None and table["finished"] == 1
    md = (root / "seeds.md").read_text()
    assert "| t2v R@1 | 30.0 ± n/a | - | 30.0 | 30.0 | 1 | 30.0 | missing |" in md
    assert table["overrides_differ"] == ["optim.lr=1e-3"] and "differ in more than the seed" in md


def test_command_line(sweep, tmp_path, capsys):
    out = tmp_path / "table"
    # --published wins over the runs' config; run folders may be given one by one
    assert main([str(sweep / "0"), str(sweep / "2"), "--published", "t2v.R1=50", "v2t.R1=41.0",
                 "--out", str(out)]) == 0
    assert "2 finished, 0 missing" in capsys.readouterr().out
    data = json.loads((out / "seeds.json").read_text())
    assert data["metrics"]["t2v.R1"]["published"] == 50.0 and data["metrics"]["v2t.R1"]["published"] == 41.0
    assert data["metrics"]["t2v.MnR"]["published"] == 15.3  # the rest still from the config
    assert data["metrics"]["t2v.R1"]["mean"] == pytest.approx(40.6)
    assert "| seed 1 | seed 3 |" in (out / "seeds.md").read_text()
    # run folders in different places need --out
    other = _run(tmp_path / "elsewhere" / "x", 9, 20.0)
    assert main([str(sweep / "0"), str(other)]) == 2 and "--out" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing")]) == 2 and "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: exit 2 and what a key looks like
        main([str(sweep), "--published", "t2v.R3=1"])
    assert e.value.code == 2 and "t2v|v2t.METRIC" in capsys.readouterr().err
    # as a module, rebuilding the sweep folder's files in place
    proc = subprocess.run([sys.executable, "-m", "clip4clip.engine.seed_table", str(sweep)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "3 finished, 3 missing" in proc.stdout and (sweep / "seeds.md").is_file()


def test_without_matplotlib_the_table_is_written_and_the_png_is_explained(sweep, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    table = write_seed_table([sweep])
    assert table["plot"] is None and "matplotlib is not installed" in table["plot_note"]
    assert (sweep / "seeds.md").is_file() and not (sweep / "seeds_r1.png").exists()
    assert seed_table.PLOT not in " ".join(table["files"])


def test_published_mapping_is_checked():
    assert seed_table.flatten_published({"t2v": {"R1": 44.5}, "isoftmax": {"v2t": {"MdR": 2}}}) == \
        {"t2v.R1": 44.5, "isoftmax.v2t.MdR": 2.0}
    with pytest.raises(ValueError, match="t2v.R@1"):
        seed_table.flatten_published({"t2v": {"R@1": 44.5}})
    with pytest.raises(ValueError, match="mapping"):
        seed_table.flatten_published(44.5)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.mark.slow
def test_multirun_over_seeds_writes_the_table_into_the_sweep_folder(tmp_path, synth_root):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_train_overrides(tmp_path / "unused", synth_root,
                                            ["trainer.epochs=1", "trainer.tensorboard=false"])
            if not a.startswith("paths.")]
    proc = subprocess.run([sys.executable, "train.py", "--multirun", "seed=1,2", *args, "+published.t2v.R1=99.5",
                           f"hydra.sweep.dir={sweep}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SeedTableCallback" not in proc.stderr, proc.stderr[-3000:]  # Hydra turns its errors into warnings
    assert "seed table: 2 finished, 0 missing" in proc.stdout
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == {"0", "1"}  # one subfolder per seed
    data = json.loads((sweep / "seeds.json").read_text())
    assert [(r["seed"], r["status"]) for r in data["runs"]] == [(1, "finished"), (2, "finished")]
    r1 = [json.loads((sweep / d / "metrics.json").read_text())["test"]["t2v"]["R1"] for d in ("0", "1")]
    row = data["metrics"]["t2v.R1"]
    assert row["mean"] == pytest.approx(sum(r1) / 2) and row["std"] == pytest.approx(abs(r1[0] - r1[1]) / math.sqrt(2))
    assert row["published"] == 99.5  # +published on the command line, as an experiment's would be
    assert "| t2v R@1 |" in (sweep / "seeds.md").read_text() and len(collect_runs([sweep])) == 2
    assert (sweep / "seeds_r1.png").is_file() == HAVE_MATPLOTLIB
    if HAVE_MATPLOTLIB:
        assert (sweep / "seeds_r1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_null_published_figures_are_unknown_not_zero():
    from clip4clip.engine.seed_table import flatten_published
    assert flatten_published({"t2v": {"R1": 47.0, "MdR": None}, "isoftmax": {"t2v": {"R1": 51.1}}, "v2t": None}) == \
        {"t2v.R1": 47.0, "isoftmax.t2v.R1": 51.1}
