"""CLIP weights from any source: the released OpenAI registry, Hugging Face and OpenCLIP
checkpoints, weight files; the one ``load_clip``.

Architecture (``CLIPConfig``) and weights are separate. ``load_clip`` takes

* a released name (``ViT-B/32``...): a file in the cache, downloaded with a SHA256 check if
  missing; the architecture is read off the weights' shapes (QuickGELU, as OpenAI trained);
* ``hf:org/name[@revision]``: a Hugging Face checkpoint from the local HF cache (downloaded
  with ``huggingface_hub`` when missing and not offline), ``hf:/a/folder`` or a folder path:
  a transformers ``CLIPModel`` folder (config.json) or OpenCLIP files (``clip.hf``,
  ``clip.openclip``), whose config gives heads and activation;
* a weights file: TorchScript or ``torch.save`` state dict (read without running code),
  ``.safetensors`` (read with the safetensors package, no pickle), ``open_clip_*.bin``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch

from ..clip.towers import CLIP, CLIPConfig
from ..core.download import ensure_file, weights_cache_dir
from .clip_state import clip_from_state_dict, read_state_dict, with_activation
from .exported import CONFIG_FILE, EXPORT_FORMAT, MAX_EXPORT_CONFIG_BYTES, is_exported_folder
from .files import read_json
from .hf import HF_PREFIX, HF_WEIGHT_FILES, is_hf_folder, read_hf_folder, resolve_hf
from .openclip import OPEN_CLIP_WEIGHT_FILES, is_open_clip_file, read_open_clip

__all__ = ["PRETRAINED", "available_models", "is_clip_folder", "is_pretrained_name", "load_clip", "pretrained_url",
           "read_clip_weights", "refuse_unknown_config", "resolve_clip_file", "resolve_clip_source"]

_BASE_URL = "https://openaipublic.azureedge.net/clip/models"

# name -> (sha256 of the file, which is also the folder in the URL; file name)
PRETRAINED: Dict[str, tuple] = {
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}


def available_models() -> list:
    return list(PRETRAINED)


def pretrained_url(name: str) -> str:
    sha, fname = PRETRAINED[name]
    return f"{_BASE_URL}/{sha}/{fname}"


def resolve_clip_file(name_or_path: Union[str, os.PathLike], cache_dir=None,
                      progress: bool = True) -> Path:
    """A released name -> its file in the cache (downloaded and checked if missing);
    anything else must be an existing file."""
    name = str(name_or_path)
    if name in PRETRAINED:
        sha, fname = PRETRAINED[name]
        return ensure_file(pretrained_url(name), weights_cache_dir(cache_dir) / fname,
                           sha256=sha, progress=progress)
    path = Path(name).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights '{name}' are neither a released model name {available_models()} "
            f"nor an existing file")
    return path


def is_pretrained_name(name: Union[str, os.PathLike]) -> bool:
    """A released OpenAI name or an ``hf:`` reference (not a path on this machine)."""
    name = str(name)
    return name in PRETRAINED or name.startswith(HF_PREFIX)


def resolve_clip_source(name_or_path: Union[str, os.PathLike], cache_dir=None, progress: bool = True) -> Path:
    """What ``load_clip`` accepts -> a local file or folder (downloading a released file or a
    Hugging Face repository if needed; see the module docstring)."""
    name = str(name_or_path)
    if name.startswith(HF_PREFIX):
        return resolve_hf(name[len(HF_PREFIX):], progress=progress)
    if name in PRETRAINED:
        return resolve_clip_file(name, cache_dir=cache_dir, progress=progress)
    path = Path(name).expanduser()
    if path.exists():
        return path
    hint = f" (a Hugging Face repository is written hf:{name})" if name.count("/") == 1 and not name.startswith(
        (".", "/", "~")) else ""
    raise FileNotFoundError(f"CLIP weights '{name}' are neither a released model name {available_models()}, "
                            f"nor hf:<org>/<name>, nor an existing file or folder{hint}")


def read_clip_weights(path: Union[str, os.PathLike], activation: Optional[str] = None,
                      released: bool = False) -> Tuple[Dict[str, torch.Tensor], CLIPConfig]:
    """A local CLIP checkpoint (file or folder) -> (OpenAI-layout float32 state dict, CLIPConfig).

    ``activation`` None: from the checkpoint's config (HF ``hidden_act``, OpenCLIP
    ``model_cfg.quick_gelu``), QuickGELU for OpenAI-layout files (as OpenAI trained).
    ``released``: the file is OpenAI's release (named in the warning an override gives)."""
    path = Path(path)
    if path.is_dir():
        if is_hf_folder(path):
            return read_hf_folder(path, activation)
        if any((path / n).is_file() for n in OPEN_CLIP_WEIGHT_FILES):
            return read_open_clip(path, activation)
        if is_exported_folder(path):
            raise ValueError(f"{path}: a whole model exported by python -m clip4clip.export, not CLIP weights; pass it "
                             "where a checkpoint is expected (checkpoint=..., --checkpoint ...)")
        refuse_unknown_config(path)
        raise FileNotFoundError(f"{path}: a folder without CLIP weights (expected a Hugging Face CLIPModel folder: "
                                f"config.json with one of {list(HF_WEIGHT_FILES)}; or OpenCLIP's "
                                f"{list(OPEN_CLIP_WEIGHT_FILES)})")
    if is_open_clip_file(path):
        return read_open_clip(path, activation)
    sd = read_state_dict(path)
    if any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        if not is_hf_folder(path.parent):
            raise ValueError(f"{path}: Hugging Face CLIPModel weights, but no CLIP config.json beside them (it holds "
                             "the head counts and the activation, which the weights do not)")
        return read_hf_folder(path.parent, activation, weights_file=path.name)
    config = CLIPConfig.from_state_dict(sd, str(path))
    return sd, with_activation(config, activation, "OpenAI's release (QuickGELU)" if released else None)


def refuse_unknown_config(folder: Path) -> None:
    """For a folder that is neither an export nor a CLIP folder but has a ``config.json``: say
    what is wrong with that file (it does not parse: line and column; or it is neither kind),
    rather than that the folder lacks weights or checkpoints. Returns when there is none."""
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        return
    cfg = read_json(cfg_path, "config.json", MAX_EXPORT_CONFIG_BYTES)  # raises: not valid JSON (line L column C...)
    if is_exported_folder(folder) or is_hf_folder(folder):
        return
    got = {k: cfg.get(k) for k in ("format", "model_type")} if isinstance(cfg, dict) else type(cfg).__name__
    raise ValueError(f"{cfg_path}: neither an export of this framework ('format': {EXPORT_FORMAT!r}) nor a "
                     f"Hugging Face CLIP config ('model_type': 'clip'); got {got}")


def is_clip_folder(path: Union[str, os.PathLike]) -> bool:
    """``path`` is a folder of CLIP weights ``load_clip`` reads: a Hugging Face ``CLIPModel``
    folder or OpenCLIP's files."""
    path = Path(path)
    return path.is_dir() and (is_hf_folder(path) or any((path / n).is_file() for n in OPEN_CLIP_WEIGHT_FILES))


def load_clip(name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
              cache_dir=None, progress: bool = True, activation: Optional[str] = None) -> CLIP:
    """Load CLIP weights into float32 parameters.

    Args:
        name_or_path: 'ViT-B/32', 'ViT-B/16', 'ViT-L/14', 'ViT-L/14@336px'; 'hf:org/name[@rev]'
            or 'hf:/folder'; a Hugging Face or OpenCLIP folder; or a weights file.
        device: where to put the model.
        cache_dir: download cache of OpenAI's files (default $CLIP4CLIP_CACHE_DIR or ~/.cache/clip);
            Hugging Face repositories use the Hugging Face cache ($HF_HOME).
        activation: 'quick_gelu' or 'gelu' to override the checkpoint's; None reads it from the
            checkpoint (see ``read_clip_weights``).
    """
    source = resolve_clip_source(name_or_path, cache_dir=cache_dir, progress=progress)
    sd, config = read_clip_weights(source, activation, released=str(name_or_path) in PRETRAINED)
    return clip_from_state_dict(sd, config, where=str(source)).to(device)
