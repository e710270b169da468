"""The defaults of a video dataset config, read from ``configs/dataset/base/video.yaml``: the one
place they are written. Hydra composes every dataset config on top of that file; code that gets
a partial config (a test's ``{"name": "msrvtt"}``, the ``dataset`` block of a checkpoint written
before an option existed, a search index's sampling) fills it from the same file with
``with_video_defaults`` instead of carrying its own fallback values.
"""
from __future__ import annotations

import copy
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping

import yaml

#: The YAML every dataset config starts from (``defaults: [base/video@_here_, _self_]``).
VIDEO_DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "configs" / "dataset" / "base" / "video.yaml"
# The one interpolation the file uses: a sibling key (``eval_keyframes: ${.keyframes}``).
_SIBLING = re.compile(r"^\$\{\.(\w+)\}$")


@lru_cache(maxsize=1)
def _video_defaults() -> Dict[str, Any]:
    try:
        text = VIDEO_DEFAULTS_FILE.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{VIDEO_DEFAULTS_FILE}: the dataset defaults are missing (the framework runs "
                                "from its source tree: configs/ must be beside data/)") from None
    values = yaml.safe_load(text)
    values.pop("defaults", None)
    return values


def video_defaults() -> Dict[str, Any]:
    """A copy of the defaults (interpolations left as written)."""
    return copy.deepcopy(_video_defaults())


def _merge(base: Dict[str, Any], cfg: Mapping) -> Dict[str, Any]:
    out = dict(base)
    for key, value in cfg.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def _resolve(node: Dict[str, Any]) -> Dict[str, Any]:
    for key, value in node.items():
        if isinstance(value, dict):
            _resolve(value)
        elif isinstance(value, str) and _SIBLING.match(value):
            node[key] = node.get(_SIBLING.match(value).group(1))
    return node


def with_video_defaults(cfg: Mapping) -> Dict[str, Any]:
    """``cfg`` (a plain mapping or an OmegaConf node of a dataset config) as a plain dict with
    every key of the video defaults present: the given values win, nested blocks
    (``frame_cache``, ``maxdiff``) are filled key by key, and ``${.key}`` defaults follow the
    given sibling (a config with only ``keyframes: maxdiff`` evaluates with maxdiff too)."""
    return _resolve(_merge(video_defaults(), cfg or {}))
