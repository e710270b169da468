"""Train a text-video retrieval model: python train.py [+experiment=NAME] [key=value ...]"""
import sys

import hydra
from omegaconf import DictConfig

from clip4clip.core.errors import user_errors


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from clip4clip.engine.train_job import run_training
    with user_errors():
        metrics, _ = run_training(cfg)
    return metrics["test"]["t2v"]["R1"]  # the value --multirun sweepers optimise


if __name__ == "__main__":
    sys.exit(main())
