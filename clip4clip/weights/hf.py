"""Hugging Face CLIP checkpoints (``transformers.CLIPModel``) in our OpenAI-layout towers.

A Hugging Face CLIP is a folder with ``config.json`` and ``model.safetensors`` (or
``pytorch_model.bin``, or shards with an index). ``hf:openai/clip-vit-base-patch32`` finds that
folder in the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) and downloads it with the ``huggingface_hub`` client when it is
missing and ``HF_HUB_OFFLINE`` is not set. ``hf:/a/folder`` (or a folder path) reads a folder.

The state dict is converted key by key to OpenAI's layout (q/k/v merged into ``in_proj``,
projections transposed); a key that no rule converts is an error listing all such keys, so
nothing is dropped silently. The architecture comes from ``config.json``: head counts, and the
activation (``hidden_act``), cannot be read off the weights. ``transformers`` is never imported.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..clip.towers import CLIPConfig
from ..core.download import weights_cache_dir
from ..tokenizer import BPE_VOCAB_ENV, BPE_VOCAB_FILENAME, ClipTokenizer
from .clip_state import clip_state_dict, with_activation
from .files import file_in_folder, read_weights_file
from .openclip import OPEN_CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHT_FILES

__all__ = ["HF_PREFIX", "HF_WEIGHT_FILES", "check_tokenizer_files", "clip_config_from_hf",
           "hf_cache_dir", "hf_offline", "hf_to_openai_state_dict", "is_hf_folder", "read_hf_folder",
           "resolve_hf"]

HF_PREFIX = "hf:"
HF_CONFIG_FILE = "config.json"
# In order of preference; an ``.index.json`` names the shards of a large checkpoint.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json")
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt")

# transformers' defaults (CLIPTextConfig / CLIPVisionConfig): config.json files written with
# ``use_diff`` leave out the values equal to them.
_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
                  "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                  "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
# hidden_act -> our activation. HF's "gelu" is the exact (erf) GELU, as nn.GELU().
_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}


# --------------------------------------------------------------------------- cache and download

def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (huggingface_hub reads
    it once at import): ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' older ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _split_repo(spec: str) -> Tuple[str, str]:
    repo, _, revision = spec.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"hf:{spec}: expected hf:<org>/<name>[@revision] (e.g. hf:openai/clip-vit-base-patch32) "
                         "or hf:/path/to/a/folder")
    return repo, revision or "main"


def _weights_present(folder: Path) -> Optional[str]:
    """The first weights file of a usable layout in ``folder`` (HF with its config.json, or OpenCLIP)."""
    if (folder / HF_CONFIG_FILE).is_file():
        for name in HF_WEIGHT_FILES:
            if (folder / name).is_file() and (not name.endswith(".index.json") or _shards_present(folder / name)):
                return name
    for name in OPEN_CLIP_WEIGHT_FILES:
        if (folder / name).is_file():
            return name
    return None


def _shard_names(index: Path) -> List[str]:
    """The shard files a ``*.index.json`` names: plain file names beside it, never paths out."""
    meta = json.loads(index.read_text())
    weight_map = (meta.get("weight_map") if isinstance(meta, dict) else None) or {}
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' is a {type(weight_map).__name__}; expected a mapping "
                         "of parameter names to shard file names")
    for name in weight_map.values():
        file_in_folder(index.parent, name, index, "weight_map")
    return sorted(set(weight_map.values()))


def _shards_present(index: Path) -> bool:
    try:
        return all((index.parent / n).is_file() for n in _shard_names(index))
    except (OSError, ValueError):
        return False


def _cached_snapshot(hub: Path, repo: str, revision: str) -> Optional[Path]:
    """``hub/models--org--name/snapshots/<commit>`` for ``revision`` (a branch or tag through
    ``refs/``, or a commit hash), if that folder exists. Read straight off the cache layout."""
    root = hub / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = root / "snapshots" / commit
    return snap if snap.is_dir() else None


def _where_to_put(repo: str, hub: Path) -> str:
    return (f"on a machine with internet run `hf download {repo}` (or `huggingface-cli download {repo}`) and copy "
            f"{hub}/models--{repo.replace('/', '--')} to the same place here, or put its config.json and "
            f"model.safetensors in a folder and pass hf:/that/folder")


def resolve_hf(spec: str, progress: bool = True) -> Path:
    """``org/name[@revision]`` or a local folder (the part after ``hf:``) -> a folder holding a
    CLIP checkpoint (Hugging Face layout, or OpenCLIP files).

    A repository is looked up in the local cache first (no network call when the snapshot of
    ``revision``, default ``main``, already holds the weights); otherwise it is downloaded with
    ``huggingface_hub.hf_hub_download`` (its progress bars), unless ``HF_HUB_OFFLINE`` is set.

    Raises:
        FileNotFoundError: a local folder that does not exist or holds no CLIP weights; or the
            repository is not cached and cannot be downloaded (one line: the repo id and where
            to put the files).
    """
    spec = str(spec)
    local = Path(spec).expanduser()
    if spec.startswith(("/", "./", "../", "~")) or local.is_dir():
        if not local.is_dir():
            raise FileNotFoundError(f"hf:{spec}: no such folder")
        if _weights_present(local) is None:
            raise FileNotFoundError(f"hf:{spec}: the folder holds no CLIP weights (expected config.json with one of "
                                    f"{list(HF_WEIGHT_FILES)}, or an OpenCLIP open_clip_*.bin/.safetensors)")
        return local
    repo, revision = _split_repo(spec)
    hub = hf_cache_dir()
    snap = _cached_snapshot(hub, repo, revision)
    if snap is not None and _weights_present(snap) is not None:
        return snap
    if hf_offline():
        found = f"(the cached snapshot {snap} has no weights file)" if snap is not None else f"is not in the cache {hub}"
        raise FileNotFoundError(f"hf:{repo}@{revision} {found} and HF_HUB_OFFLINE is set: {_where_to_put(repo, hub)}")
    return _download(repo, revision, hub, progress)


def _download(repo: str, revision: str, hub: Path, progress: bool) -> Path:
    """Fetch config.json + the first weights layout the repository has, and the tokenizer files
    if it has them, into the cache; returns the snapshot folder."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError


    def fetch(name: str) -> Optional[Path]:
        """The file's path in the cache, or None if the repository has no such file."""
        try:
            return Path(huggingface_hub.hf_hub_download(repo, name, revision=revision, cache_dir=str(hub)))
        except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: the hub could not be reached
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FileNotFoundError(f"hf:{repo}@{revision}: not in the cache and the hub cannot be reached "
                                    f"({first}); {_where_to_put(repo, hub)}") from e
        except EntryNotFoundError:
            return None
        except Exception as e:  # unknown or gated repository, bad revision, HTTP errors
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FileNotFoundError(f"hf:{repo}@{revision}: could not download {name} ({type(e).__name__}: {first}); "
                                    f"{_where_to_put(repo, hub)}") from e

    hide = not progress and not huggingface_hub.utils.are_progress_bars_disabled()
    if hide:
        huggingface_hub.utils.disable_progress_bars()
    try:
        config = fetch(HF_CONFIG_FILE)
        candidates = HF_WEIGHT_FILES if config is not None else ()
        for name in (*candidates, *OPEN_CLIP_WEIGHT_FILES):
            path = fetch(name)
            if path is None:
                continue
            if name.endswith(".index.json"):
                for shard in _shard_names(path):
                    if fetch(shard) is None:
                        raise FileNotFoundError(f"hf:{repo}@{revision}: {name} names the shard {shard}, which the "
                                                "repository does not have")
            if name in OPEN_CLIP_WEIGHT_FILES:
                fetch(OPEN_CLIP_CONFIG_FILE)
            for tok in HF_TOKENIZER_FILES:
                fetch(tok)
            return path.parent
    finally:
        if hide:
            huggingface_hub.utils.enable_progress_bars()
    raise FileNotFoundError(f"hf:{repo}@{revision}: the repository has no CLIP weights (looked for config.json with "
                            f"{list(HF_WEIGHT_FILES)}, and {list(OPEN_CLIP_WEIGHT_FILES)})")


# --------------------------------------------------------------------------- config and conversion

def is_hf_folder(folder: Union[str, os.PathLike]) -> bool:
    """``folder/config.json`` describes a transformers CLIPModel."""
    path = Path(folder) / HF_CONFIG_FILE
    if not path.is_file():
        return False
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and (cfg.get("model_type") == "clip" or "CLIPModel" in (cfg.get("architectures") or []))


def _sub_config(cfg: Mapping, name: str, defaults: Mapping) -> dict:
    sub = cfg.get(f"{name}_config") or cfg.get(f"{name}_config_dict") or {}  # *_dict: transformers < 4.23
    return {**defaults, **sub}


def clip_config_from_hf(cfg: Mapping, where: str = "config.json") -> CLIPConfig:
    """A transformers ``CLIPConfig`` dict (config.json) -> our CLIPConfig, refusing what our towers
    do not implement (MLP ratio other than 4, LayerNorm eps other than 1e-5, unknown activation)."""
    if cfg.get("model_type") not in (None, "clip"):
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r} is not a CLIP (expected 'clip')")
    t = _sub_config(cfg, "text", _TEXT_DEFAULTS)
    v = _sub_config(cfg, "vision", _VISION_DEFAULTS)
    problems = []
    for tower, c in (("text", t), ("vision", v)):
        if c["intermediate_size"] != 4 * c["hidden_size"]:
            problems.append(f"{tower} intermediate_size {c['intermediate_size']} is not 4 x hidden_size {c['hidden_size']}")
        if abs(float(c["layer_norm_eps"]) - 1e-5) > 1e-12:
            problems.append(f"{tower} layer_norm_eps {c['layer_norm_eps']} (our LayerNorm uses 1e-5)")
        if c["hidden_act"] not in _HF_ACTIVATIONS:
            problems.append(f"{tower} hidden_act {c['hidden_act']!r} (supported: {sorted(_HF_ACTIVATIONS)})")
    if t["hidden_act"] != v["hidden_act"]:
        problems.append(f"text hidden_act {t['hidden_act']!r} differs from vision hidden_act {v['hidden_act']!r}")
    if v["num_channels"] != 3:
        problems.append(f"vision num_channels {v['num_channels']} (expected 3)")
    image, patch = v["image_size"], v["patch_size"]
    for label, value in (("image_size", image), ("patch_size", patch)):
        if isinstance(value, (list, tuple)) and len(set(value)) != 1:
            problems.append(f"non-square vision {label} {value}")
    if problems:
        raise ValueError(f"{where}: this Hugging Face CLIP is not one our towers implement: " + "; ".join(problems))
    image = image[0] if isinstance(image, (list, tuple)) else image
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return CLIPConfig(
        embed_dim=int(cfg.get("projection_dim") or t.get("projection_dim") or 512),
        image_resolution=int(image), vision_layers=int(v["num_hidden_layers"]),
        vision_width=int(v["hidden_size"]), vision_patch_size=int(patch),
        context_length=int(t["max_position_embeddings"]), vocab_size=int(t["vocab_size"]),
        transformer_width=int(t["hidden_size"]), transformer_heads=int(t["num_attention_heads"]),
        transformer_layers=int(t["num_hidden_layers"]), vision_heads=int(v["num_attention_heads"]),
        activation=_HF_ACTIVATIONS[t["hidden_act"]])


# HF name (regex, full match) -> OpenAI name. Layer internals are shared by both towers.
_LAYER = {
    r"self_attn\.out_proj\.(weight|bias)": r"attn.out_proj.\1",
    r"layer_norm1\.(weight|bias)": r"ln_1.\1",
    r"layer_norm2\.(weight|bias)": r"ln_2.\1",
    r"mlp\.fc1\.(weight|bias)": r"mlp.c_fc.\1",
    r"mlp\.fc2\.(weight|bias)": r"mlp.c_proj.\1",
}
_TOWERS = {"text_model.encoder.layers.": "transformer.resblocks.",
           "vision_model.encoder.layers.": "visual.transformer.resblocks."}
_DIRECT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
# nn.Linear(width, embed, bias=False).weight is [embed, width]; OpenAI stores x @ proj, [width, embed].
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
# Buffers of older transformers versions: arange(max_positions), nothing learned.
_POSITION_IDS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def hf_to_openai_state_dict(sd: Mapping[str, torch.Tensor], where: str = "Hugging Face CLIP") -> Dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict -> OpenAI's layout. Every key is either converted or an error:
    the message lists every key no rule converts. q/k/v projections of a layer are merged into
    ``attn.in_proj_weight``/``in_proj_bias`` (rows q, k, v) and must all be present with equal shapes.
    ``position_ids`` buffers are dropped after checking they are 0..n-1."""
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    unconverted, problems = [], []
    for key, value in sd.items():
        if key in _DIRECT:
            out[_DIRECT[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key in _POSITION_IDS:
            flat = value.reshape(-1)
            if not torch.equal(flat.long(), torch.arange(flat.numel())):
                problems.append(f"{key} is not 0..{flat.numel() - 1}")
        else:
            tower = next((p for p in _TOWERS if key.startswith(p)), None)
            m = re.fullmatch(r"(\d+)\.(.+)", key[len(tower):]) if tower else None
            if m is None:
                unconverted.append(key)
                continue
            layer, rest = m.groups()
            prefix = f"{_TOWERS[tower]}{layer}."
            mq = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if mq:
                qkv.setdefault((prefix, mq.group(2)), {})[mq.group(1)] = value
                continue
            for pattern, target in _LAYER.items():
                if re.fullmatch(pattern, rest):
                    out[prefix + re.sub(pattern, target, rest)] = value
                    break
            else:
                unconverted.append(key)
    for (prefix, kind), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            problems.append(f"{prefix}attn.in_proj_{kind} lacks the {'/'.join(missing)} projection")
            continue
        shapes = {tuple(parts[p].shape) for p in "qkv"}
        if len(shapes) != 1:
            problems.append(f"{prefix}attn q/k/v {kind} shapes differ: {[list(parts[p].shape) for p in 'qkv']}")
            continue
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unconverted:
        problems.append(f"{len(unconverted)} key(s) no conversion rule covers (not a CLIPModel state dict, or a "
                        f"variant our towers lack): {', '.join(sorted(unconverted))}")
    if problems:
        raise ValueError(f"{where}: cannot convert to CLIP's layout: " + "; ".join(problems))
    return out


def _read_hf_weights(folder: Path, name: str) -> Dict[str, torch.Tensor]:
    path = folder / name
    if not name.endswith(".index.json"):
        return read_weights_file(path)
    sd: Dict[str, torch.Tensor] = {}
    for shard in _shard_names(path):
        sd.update(read_weights_file(folder / shard))
    return sd


def read_hf_folder(folder: Union[str, os.PathLike], activation: Optional[str] = None,
                   weights_file: Optional[str] = None) -> Tuple[Dict[str, torch.Tensor], CLIPConfig]:
    """A Hugging Face CLIP folder -> (OpenAI-layout float32 state dict, CLIPConfig).

    ``activation``: None takes ``hidden_act`` from config.json; an explicit value wins (with a
    warning when it contradicts the checkpoint). Where the folder ships ``vocab.json``/``merges.txt``
    and CLIP's BPE vocabulary is available locally, they are compared (``check_tokenizer_files``).
    ``weights_file``: which file of the folder to read (default: the first of ``HF_WEIGHT_FILES``)."""
    folder = Path(folder)
    cfg_path = folder / HF_CONFIG_FILE
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: cannot read the Hugging Face config ({type(e).__name__}: {e})") from e
    config = clip_config_from_hf(cfg, str(cfg_path))
    name = weights_file or next((n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{folder}: config.json but no weights (expected one of {list(HF_WEIGHT_FILES)})")
    where = str(folder / name)
    sd = hf_to_openai_state_dict(clip_state_dict(_read_hf_weights(folder, name), where), where)
    config = with_activation(config, activation, f"{cfg_path} (hidden_act)")
    _auto_check_tokenizer(folder)
    return sd, config


# --------------------------------------------------------------------------- tokenizer files

def check_tokenizer_files(folder: Union[str, os.PathLike], tokenizer) -> Optional[str]:
    """Compare a checkpoint's ``vocab.json``/``merges.txt`` with ``tokenizer`` (a ClipTokenizer:
    CLIP's BPE). Returns None when they agree (or the folder has neither file), else the first
    difference, which is also issued as a warning naming the file: the model is then used with
    CLIP's BPE, which may not be what it was trained with."""
    folder = Path(folder)
    message = None
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if vocab_path.is_file():
        try:
            theirs = json.loads(vocab_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            theirs, message = None, f"{vocab_path}: unreadable ({type(e).__name__}: {e})"
        if theirs is not None:
            message = _vocab_difference(theirs, tokenizer._encoder, vocab_path)
    if message is None and merges_path.is_file():
        ours = sorted(tokenizer._ranks, key=tokenizer._ranks.get)
        lines = merges_path.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        message = _merges_difference(merges, ours, merges_path)
    if message:
        warnings.warn(f"{message}; this checkpoint's tokenizer is not CLIP's BPE vocabulary, and the model is used "
                      "with CLIP's", stacklevel=2)
    return message


def _vocab_difference(theirs: Mapping[str, int], ours: Mapping[str, int], path: Path) -> Optional[str]:
    if theirs == dict(ours):
        return None
    by_id_theirs = {i: t for t, i in theirs.items()}
    by_id_ours = {i: t for t, i in ours.items()}
    for i in range(max(len(by_id_theirs), len(by_id_ours))):
        a, b = by_id_theirs.get(i), by_id_ours.get(i)
        if a != b:
            return f"{path} differs from CLIP's vocabulary at id {i}: {a!r} there, {b!r} in CLIP's"
    return f"{path} differs from CLIP's vocabulary ({len(theirs)} tokens there, {len(ours)} in CLIP's)"


def _merges_difference(theirs: List[tuple], ours: List[tuple], path: Path) -> Optional[str]:
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            return f"{path} differs from CLIP's merges at merge {i}: {' '.join(a)!r} there, {' '.join(b)!r} in CLIP's"
    if len(theirs) != len(ours):
        return f"{path} has {len(theirs)} merges, CLIP's BPE has {len(ours)}"
    return None


def _auto_check_tokenizer(folder: Path) -> None:
    """``check_tokenizer_files`` with CLIP's BPE if it is on this machine; never downloads it."""
    if not any((folder / n).is_file() for n in HF_TOKENIZER_FILES):
        return

    local = os.environ.get(BPE_VOCAB_ENV) or weights_cache_dir() / BPE_VOCAB_FILENAME
    if Path(local).expanduser().is_file():
        check_tokenizer_files(folder, ClipTokenizer(vocab_path=local))
