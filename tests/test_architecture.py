"""One loader serves every entry point: evaluate.py takes a run folder as search does; one
frame-sampling conversion serves datasets, extraction and search. (The layering itself is
tests/test_layers.py.)"""
import pytest

from clip4clip.weights import load_model, read_checkpoint
from clip4clip.engine.evaluate_job import run_evaluation
from clip4clip.engine.train_job import run_training
from data import KeyframeParams
from framework_utils import compose_cfg, tiny_train_overrides


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
