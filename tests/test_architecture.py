"""The layering holds (model code never reaches up into the engine), and one loader serves
every entry point: evaluate.py takes a run folder as search does."""
import ast
from pathlib import Path

import pytest

from clip4clip.weights import load_model, read_checkpoint
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.train_job import run_training
from data import KeyframeParams
from framework_utils import REPO, compose_cfg, tiny_train_overrides


def _imports(path: Path):
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def test_only_the_engine_imports_the_engine():
    offenders = []
    for path in (REPO / "clip4clip").rglob("*.py"):
        if "engine" in path.relative_to(REPO / "clip4clip").parts:
            continue
        for name in _imports(path):
            if name == "clip4clip.engine" or name.startswith("clip4clip.engine."):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    for path in list((REPO / "data").rglob("*.py")) + list((REPO / "adapters").rglob("*.py")):
        for name in _imports(path):
            if name.startswith("clip4clip.engine"):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, offenders


def test_model_code_imports_no_hydra_and_no_process_groups():
    model_files = [REPO / "clip4clip" / "model.py", *(REPO / "clip4clip" / "heads").glob("*.py"),
                   *(REPO / "clip4clip" / "clip").glob("*.py")]
    for path in model_files:
        names = list(_imports(path))
        assert not [n for n in names if n.startswith(("hydra", "omegaconf", "torch.distributed"))], path


def test_frame_sampling_comes_from_one_conversion():
    cfg = compose_cfg("train", ["dataset=msrvtt9k", "paths.output_dir=/tmp/x"]).dataset
    train, test = KeyframeParams.from_config(cfg, "train"), KeyframeParams.from_config(cfg, "test")
    assert train == test == KeyframeParams(rule="official")  # the YAML base and the dataclass defaults agree
    demo = compose_cfg("train", ["+experiment=demo", "paths.output_dir=/tmp/x"]).dataset
    assert (KeyframeParams.from_config(demo, "test").max_frames, KeyframeParams.from_config(demo, "test").fps) == \
        (int(demo.max_frames), float(demo.fps))
    with pytest.raises(TypeError, match="unknown frame-sampling option"):
        KeyframeParams.build(max_frame=3)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    out = root / "run"
    run_training(compose_cfg("train", tiny_train_overrides(out, root / "synthetic",
                                                           ["trainer.epochs=1", "trainer.tensorboard=false"])))
    return out


def test_evaluate_takes_a_run_folder_like_search(tmp_path, run_folder):
    by_file, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={run_folder / 'checkpoints' / 'best.pt'}",
                                                         f"paths.output_dir={tmp_path / 'a'}", "trainer.progress=false"]))
    by_folder, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={run_folder}",
                                                           f"paths.output_dir={tmp_path / 'b'}", "trainer.progress=false"]))
    assert by_folder["metrics"] == by_file["metrics"] and by_folder["checkpoint_kind"] == "ours"
    kind, _, source = read_checkpoint(run_folder)
    assert kind == "ours" and source == str((run_folder / "checkpoints" / "best.pt").resolve())
    loaded = load_model(run_folder)
    assert loaded.config["model"]["head"]["name"] == "seqTransf" and loaded.tokenizer.vocab_size > 0
    with pytest.raises(FileNotFoundError, match="a folder without checkpoints/best.pt"):
        read_checkpoint(tmp_path)


def test_an_exported_folder_is_a_checkpoint_everywhere(tmp_path, run_folder):
    from clip4clip.weights.export import export_checkpoint
    folder = tmp_path / "export"
    export_checkpoint(run_folder, folder)
    kind, _, _ = read_checkpoint(folder)
    assert kind == "ours"
    a, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={folder}", f"paths.output_dir={tmp_path / 'a'}",
                                                   "trainer.progress=false"]))
    b, _ = run_evaluation(compose_cfg("evaluate", [f"checkpoint={run_folder}", f"paths.output_dir={tmp_path / 'b'}",
                                                   "trainer.progress=false"]))
    assert a["metrics"] == b["metrics"]


def test_too_many_frames_for_the_head_fail_before_training(tmp_path, run_folder):
    from clip4clip.engine.train_job import run_training
    cfg = compose_cfg("train", tiny_train_overrides(tmp_path / "run", run_folder.parent / "synthetic",
                                                    ["trainer.epochs=1", "+model.head.num_positions=3"]))
    with pytest.raises(ValueError, match=r"dataset.max_frames=4 but the seqTransf head takes at most 3"):
        run_training(cfg)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_extraction_uses_the_datasets_frame_rule():
    from extract_frames import settings_from_config
    from omegaconf import OmegaConf
    cfg = OmegaConf.to_container(compose_cfg("extract_frames", ["dataset=didemo"]), resolve=True)
    assert settings_from_config(cfg).keyframes.rule == "official"
