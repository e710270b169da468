"""The dataset config's defaults are written once, in configs/dataset/base/video.yaml: composed
configs, partial configs and the Python API all take them from there (issue 22, item 5)."""
import re

import pytest
import yaml

from data import defaults
from data.splits import frame_cache_dir
from data.video.keyframes import KeyframeParams
from framework_utils import REPO, compose_cfg


def test_a_partial_config_gets_exactly_the_composed_defaults():
    composed = compose_cfg("train", ["dataset=msrvtt9k"]).dataset
    own = yaml.safe_load((REPO / "configs" / "dataset" / "msrvtt9k.yaml").read_text())  # what the dataset sets
    filled = defaults.with_video_defaults({"name": "msrvtt9k"})
    for key, value in defaults.video_defaults().items():
        if key in own:
            continue
        want = composed[key]
        assert filled[key] == (dict(want) if hasattr(want, "items") else want), key


def test_a_given_value_wins_and_nested_blocks_fill_key_by_key():
    filled = defaults.with_video_defaults({"frame_cache": {"size": 112}, "keyframes": "maxdiff"})
    assert filled["frame_cache"] == {**defaults.video_defaults()["frame_cache"], "size": 112}
    assert filled["eval_keyframes"] == "maxdiff"  # ${.keyframes} follows the given sibling
    assert defaults.with_video_defaults({"keyframes": "maxdiff", "eval_keyframes": "uniform"})["eval_keyframes"] == \
        "uniform"


def test_keyframe_params_defaults_are_the_yaml_ones():
    yaml_values = defaults.video_defaults()
    p = KeyframeParams()
    assert (p.scheme, p.max_frames, p.fps, p.slice_framepos, p.step, p.blur, p.rule) == (
        yaml_values["keyframes"], yaml_values["max_frames"], float(yaml_values["fps"]), yaml_values["slice_framepos"],
        yaml_values["maxdiff"]["step"], yaml_values["maxdiff"]["blur"], yaml_values["frame_rule"])
    assert KeyframeParams.from_config({}, "test") == p


def test_changing_the_yaml_changes_what_a_partial_config_gets(tmp_path, monkeypatch):
    text = defaults.VIDEO_DEFAULTS_FILE.read_text()
    changed = tmp_path / "video.yaml"
    changed.write_text(re.sub(r"(?m)^(  size:) 224", r"\1 112", text).replace("max_frames: 12", "max_frames: 5"))
    monkeypatch.setattr(defaults, "VIDEO_DEFAULTS_FILE", changed)
    defaults._video_defaults.cache_clear()
    try:
        assert frame_cache_dir({"name": "msrvtt9k"}, tmp_path, "uniform").name == "uniform-112"
        assert KeyframeParams.from_config({"name": "msrvtt9k"}, "train").max_frames == 5
    finally:
        defaults._video_defaults.cache_clear()


@pytest.mark.parametrize("path", ["data/splits.py", "data/video/keyframes.py"])
def test_no_fallback_values_are_written_in_code(path):
    # `.get("key", <literal>)` is how a second copy of a default creeps back in.
    source = (REPO / path).read_text()
    assert not re.findall(r"\.get\(\"\w+\", (?:[\d\"']|True|False)", source)
