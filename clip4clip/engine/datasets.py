"""Datasets from the ``dataset`` config group (names: synthetic, msrvtt)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

DATASETS = ("synthetic", "msrvtt")


def dataset_root(cfg: Mapping, progress: bool = True) -> Path:
    """The folder to read; the synthetic dataset is generated here on first use."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"dataset.name={name!r}; expected one of {DATASETS}")
    if name == "synthetic":
        from data import ensure_synthetic_dataset
        gen = dict(cfg.get("generator") or {})
        return ensure_synthetic_dataset(cfg.get("root"), progress=progress, **gen)
    root = Path(str(cfg.get("root"))).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset.root={root} does not exist: point dataset.root at the folder "
                                f"holding the {name.upper()} annotation files and videos/")
    return root


def build_split(cfg: Mapping, root: Path, split: str, image_size: int, seed: int,
                progress: bool = True):
    """A map-style dataset for ``split`` ('train', 'val', 'test') of the configured dataset."""
    from data import MSRVTTDataset
    return MSRVTTDataset(
        root, split=split, train_csv=cfg.get("train_csv", "MSRVTT_train.9k.csv"),
        video_dir=cfg.get("video_dir", "videos"),
        caption_mode=cfg.get("caption_mode", "random") if split == "train" else "all",
        fps=float(cfg.get("fps", 1.0)), max_frames=int(cfg.get("max_frames", 12)),
        slice_framepos=cfg.get("slice_framepos", "uniform"),
        frame_order=cfg.get("frame_order", "normal") if split == "train" else cfg.get("eval_frame_order", "normal"),
        image_size=image_size, seed=seed,
        cache_frames=bool(cfg.get("cache_frames", False)),
        cache_budget_bytes=int(float(cfg.get("cache_budget_gb", 2.0)) * 2 ** 30),
        progress=progress,
    )


def val_split_name(cfg: Mapping) -> Optional[str]:
    return cfg.get("val_split") or None
