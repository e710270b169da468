"""The analysis helpers of experiments/ scripts (pure functions; the scripts' full runs need trained models)."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_top1_wrong_counts_each_attribute_the_retrieved_clip_gets_wrong():
    ds = _load("direction_separation")
    attrs = {
        "a": dict(color="red", shape="circle", background="black", direction="left"),
        "b": dict(color="red", shape="square", background="black", direction="left"),   # shape differs from a
        "c": dict(color="blue", shape="circle", background="gray", direction="right"),
    }
    video = torch.eye(3)
    # Caption 0 (clip a) retrieves b: shape wrong. Caption 1 (clip b) retrieves b: right.
    # Caption 2 (clip c) retrieves a: colour, background and direction wrong.
    text = torch.tensor([[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]])
    enc = SimpleNamespace(text_emb=text, video_emb=video, video_ids=["a", "b", "c"],
                          text_video_index=torch.tensor([0, 1, 2]))
    wrong = ds.top1_wrong(enc, attrs)
    assert wrong["shape"] == 100 / 3
    assert wrong["color"] == wrong["background"] == wrong["direction"] == 100 / 3
    enc.text_emb = video.clone()  # every caption finds its own clip
    assert ds.top1_wrong(enc, attrs) == {k: 0.0 for k in ds.ATTRIBUTES}
