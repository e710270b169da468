"""docs/architecture.md's "How to add a dataset / head" followed to the letter, in a scratch copy:
the steps it lists are all it takes."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from framework_utils import CONFIGS, TINY_MODEL
from toy_datasets import write_video

READER = '''
from data.readers.base import SplitIndex, VideoTextDataset, find_video_files, read_text_file


class TsvDataset(VideoTextDataset):
    """captions.tsv: <video id> TAB <caption>, all in every split."""

    def __init__(self, root, split="train", *, captions_file="captions.tsv", video_dir="videos", **options):
        self.captions_file = captions_file
        super().__init__(root, split, video_dir=video_dir, **options)

    def _load_index(self):
        path = self.root / self.captions_file
        if not path.is_file():
            return SplitIndex([], [], {}, {}, [str(path)])
        captions = {}
        for line in read_text_file(path).splitlines():
            vid, text = line.split("\\t")
            captions.setdefault(vid, []).append(text)
        paths, missing = find_video_files(self.video_dir, sorted(captions), (".mp4",))
        ids = [v for v in sorted(captions) for _ in captions[v]]
        texts = [t for v in sorted(captions) for t in captions[v]]
        return SplitIndex(ids, texts, captions, paths, missing_videos=missing)

    def _layout(self):
        return f"  {self.captions_file}  (video id TAB caption)\\n  {self.video_dir.name}/<video id>.mp4"
'''

DATASET_YAML = """defaults:
  - base/video@_here_
  - _self_
name: tsvset
root: ${paths.data_dir}/tsvset
captions_file: captions.tsv
video_dir: videos
caption_mode: all
"""

HEAD = '''
import torch

from clip4clip.heads.base import TemporalHead


class MaxPooling(TemporalHead):
    name = "maxP"

    def __init__(self, width: int = 0):
        super().__init__()

    def forward(self, frame_features, frame_mask):
        """[B, T, D], [B, T] -> [B, D]: the largest value of each channel over the valid frames."""
        masked = frame_features.masked_fill(~frame_mask.bool()[..., None], float("-inf"))
        return torch.nn.functional.normalize(masked.max(dim=1).values, dim=-1)
'''


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A scratch package folder on sys.path and a copy of configs/ to add files to."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.syspath_prepend(str(pkg))
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    yield pkg, configs
    for name in ("scratch_tsvset", "scratch_maxp"):
        sys.modules.pop(name, None)


def _compose(configs: Path, overrides):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_adding_a_dataset_takes_a_reader_a_registry_entry_and_a_yaml(scratch, tmp_path, monkeypatch):
    pkg, configs = scratch
    import data.splits as splits
    # 1. the reader (here in a scratch module instead of data/readers/<name>.py)
    (pkg / "scratch_tsvset.py").write_text(READER)
    from scratch_tsvset import TsvDataset
    # 2. its entry in data/splits.py's READERS
    monkeypatch.setitem(splits.READERS, "tsvset", splits.Reader(TsvDataset, ("captions_file", "video_dir"),
                                                               "captions.tsv and videos/"))
    # 3. configs/dataset/<name>.yaml
    (configs / "dataset" / "tsvset.yaml").write_text(DATASET_YAML)

    root = tmp_path / "tsvset"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for vid in ("a", "b"):
        write_video(root / "videos" / f"{vid}.mp4", rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), fps=8)
    (root / "captions.tsv").write_text("a\tthe first clip\nb\tthe second clip\nb\tanother caption\n")

    cfg = _compose(configs, ["dataset=tsvset", f"dataset.root={root}", "dataset.max_frames=4"])
    ds = splits.build_split(cfg.dataset, splits.dataset_root(cfg.dataset), "test", 32, 0, progress=False)
    assert isinstance(ds, TsvDataset)
    assert ds.captions == {"a": ["the first clip"], "b": ["the second clip", "another caption"]}
    item = ds[0]
    assert isinstance(item, dict) and item  # frames decoded through the shared base class


def test_adding_a_head_takes_a_class_a_heads_entry_and_a_yaml(scratch, monkeypatch):
    pkg, configs = scratch
    import clip4clip.heads as heads
    from clip4clip.weights import build_model
    # 1. the head (here in a scratch module instead of clip4clip/heads/<name>.py)
    (pkg / "scratch_maxp.py").write_text(HEAD)
    from scratch_maxp import MaxPooling
    # 2. its entry in HEADS
    monkeypatch.setitem(heads.HEADS, "maxP", MaxPooling)
    # 3. configs/model/head/<name>.yaml
    (configs / "model" / "head" / "maxP.yaml").write_text("name: maxP\n")

    cfg = _compose(configs, ["+experiment=demo", *TINY_MODEL, "model/head=maxP"])
    model = build_model(cfg.model, vocab_size=64).eval()
    assert isinstance(model.head, MaxPooling)
    size = model.clip.config.image_resolution if hasattr(model.clip.config, "image_resolution") else 224
    with torch.no_grad():
        emb = model.encode_video(torch.randn(2, 3, 3, size, size), torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert emb.shape == (2, model.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
