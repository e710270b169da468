"""Evaluate a checkpoint: python evaluate.py checkpoint=PATH|ViT-B/32 [dataset=...] [key=value ...]"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clip4clip.core.errors import user_errors


@hydra.main(config_path="configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from clip4clip.engine.evaluate_job import run_evaluation
    with user_errors():
        result, _ = run_evaluation(cfg, overrides=HydraConfig.get().overrides.task)
    return result["metrics"]["t2v"]["R1"]


if __name__ == "__main__":
    sys.exit(main())
