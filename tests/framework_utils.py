"""Helpers for framework tests: compose the real configs and shrink them."""
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY_MODEL = [
    "model.clip.arch.embed_dim=32", "model.clip.arch.vision_width=32", "model.clip.arch.vision_heads=2",
    "model.clip.arch.vision_layers=1", "model.clip.arch.transformer_width=32",
    "model.clip.arch.transformer_heads=2", "model.clip.arch.transformer_layers=1",
]
SMALL_SYNTHETIC = [
    "dataset.generator.num_train=48", "dataset.generator.num_val=16", "dataset.generator.num_test=16",
    "dataset.max_frames=4", "dataset.fps=0.5",
]


def compose_cfg(config_name="train", overrides=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def tiny_train_overrides(out_dir, data_root, extra=()):
    return ["+experiment=demo", *TINY_MODEL, *SMALL_SYNTHETIC,
            f"dataset.root={data_root}", f"paths.output_dir={out_dir}", "trainer.epochs=2",
            "trainer.batch_size=16", "trainer.eval_batch_size=8", "trainer.progress=false",
            "trainer.log_every=1", "trainer.threads=1",
            # The demo's 500-step text hold would outlast these 6-step runs: hold 2 steps, so a
            # run goes through the hold and the release and validates both epochs.
            "optim.hold_text_steps=2", *extra]
