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

import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..clip.towers import CLIPConfig
from ..core.download import weights_cache_dir
from ..tokenizer import BPE_VOCAB_ENV, BPE_VOCAB_FILENAME, ClipTokenizer
from .clip_state import clip_state_dict, with_activation
from .files import (COUNT, POSITIVE, SECTION, SIZE, TEXT, field_problems, file_in_folder, nullable, read_json,
                    read_weights_file, regular_file)
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

# config.json's schema: checked right after parsing, before any value is used.
_TOP_SCHEMA = {"model_type": TEXT, "projection_dim": nullable(COUNT), "text_config": nullable(SECTION),
               "vision_config": nullable(SECTION), "text_config_dict": nullable(SECTION),
               "vision_config_dict": nullable(SECTION)}
_TOWER_SCHEMA = {"hidden_size": COUNT, "intermediate_size": COUNT, "num_hidden_layers": COUNT,
                 "num_attention_heads": COUNT, "hidden_act": TEXT, "layer_norm_eps": POSITIVE}
_TEXT_SCHEMA = {**_TOWER_SCHEMA, "vocab_size": COUNT, "max_position_embeddings": COUNT,
                "projection_dim": nullable(COUNT)}
_VISION_SCHEMA = {**_TOWER_SCHEMA, "num_channels": COUNT, "image_size": SIZE, "patch_size": SIZE}
# Our CLIPConfig fields as config.json names them, for errors about sizes the weights contradict.
_HF_NAMES = {"vision_layers": "vision_config.num_hidden_layers", "vision_width": "vision_config.hidden_size",
             "vision_patch_size": "vision_config.patch_size", "image_resolution": "vision_config.image_size",
             "transformer_layers": "text_config.num_hidden_layers", "transformer_width": "text_config.hidden_size",
             "context_length": "text_config.max_position_embeddings", "vocab_size": "text_config.vocab_size",
             "embed_dim": "projection_dim"}

# Revisions as the Hub names them: branch and tag names (components of letters, digits, '.',
# '_', '-', not starting with '.'; 'refs/pr/1' for pull requests) or commit hashes. Anything
# else ('..', an absolute path, a backslash, NUL) could make refs/<rev> or snapshots/<rev>
# point outside the repository's cache folder.
_REVISION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(?:/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_MAX_REVISION_CHARS = 255
# What huggingface_hub writes into refs/<revision>: the commit's 40-hex-digit hash.
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# vocab.json and merges.txt are compared with CLIP's BPE only as advice. CLIP's are 0.86 MB and
# 0.52 MB; a file far larger cannot be CLIP's vocabulary and is not read (a 150 MB vocab.json
# would take 1.7 GB as Python objects).
MAX_TOKENIZER_FILE_BYTES = 8 * 2 ** 20


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
    revision = revision or "main"
    if not _REVISION_RE.fullmatch(revision) or ".." in revision or len(revision) > _MAX_REVISION_CHARS:
        raise ValueError(f"hf:{spec}: revision {revision!r:.80} is not a branch, tag or commit name (letters, digits, "
                         "'.', '_', '-' and '/' between parts; no '..', no leading '/' or '.')")
    return repo, revision


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
    """The shard files a ``*.index.json`` names: plain file names beside it, never paths out
    (nor links out of the folder; in a Hugging Face cache snapshot, out of the repository's)."""
    meta = read_json(index, "Hugging Face weights index")
    weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        got = type(weight_map).__name__ if weight_map is not None or isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{index}: 'weight_map' is {'empty' if weight_map == {} else 'a ' + got}; expected a mapping "
                         "of parameter names to shard file names")
    within = _repo_folder(index.parent)
    for name in weight_map.values():
        file_in_folder(index.parent, name, index, "weight_map", within=within)
    return sorted(set(weight_map.values()))


def _repo_folder(folder: Path) -> Path:
    """The folder a file of ``folder`` may link into: the repository's cache folder for a
    snapshot of the Hugging Face cache (its files link to ``../../blobs/``), else ``folder``."""
    return folder.parent.parent if folder.parent.name == "snapshots" else folder


def _shards_present(index: Path) -> bool:
    try:
        return all((index.parent / n).is_file() for n in _shard_names(index))
    except (OSError, ValueError):
        return False


def _cached_snapshot(hub: Path, repo: str, revision: str) -> Optional[Path]:
    """``hub/models--org--name/snapshots/<commit>`` for ``revision`` (a branch or tag through
    ``refs/``, or a commit hash), if that folder exists. Read straight off the cache layout;
    what ``refs/<revision>`` holds must be a commit hash, and the snapshot must lie inside the
    repository's ``snapshots/`` (``revision`` itself was checked by ``_split_repo``)."""
    root = hub / ("models--" + repo.replace("/", "--"))
    ref = root / "refs" / revision
    commit = revision
    if ref.is_file():
        with open(regular_file(ref, "Hugging Face cache ref"), "rb") as f:
            commit = f.read(_MAX_REVISION_CHARS + 1).decode("utf-8", errors="replace").strip()
        if not _COMMIT_RE.fullmatch(commit):
            raise ValueError(f"hf:{repo}@{revision}: the cache's {ref} holds {commit!r:.60}; expected the "
                             "40-hex-digit commit hash huggingface_hub writes there (an edited or corrupt cache)")
    snap = root / "snapshots" / commit
    if not snap.is_dir():
        return None
    if not snap.resolve().is_relative_to((root / "snapshots").resolve()):
        raise ValueError(f"{snap}: the cached snapshot of hf:{repo}@{revision} leads to {snap.resolve()}, outside "
                         f"{root / 'snapshots'}")
    return snap


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
    """``folder/config.json`` describes a transformers CLIPModel (False too when it cannot be
    read; ``read_hf_folder`` reports why)."""
    path = Path(folder) / HF_CONFIG_FILE
    if not path.is_file():
        return False
    try:
        cfg = read_json(path, "Hugging Face config")
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and (cfg.get("model_type") == "clip" or "CLIPModel" in (cfg.get("architectures") or []))


def _sub_config(cfg: Mapping, name: str, defaults: Mapping) -> dict:
    sub = cfg.get(f"{name}_config") or cfg.get(f"{name}_config_dict") or {}  # *_dict: transformers < 4.23
    return {**defaults, **sub}


def _schema_problems(cfg: Any) -> List[str]:
    """config.json's types and ranges (``_TOP_SCHEMA``, ``_TEXT_SCHEMA``, ``_VISION_SCHEMA``), and
    the two divisibility rules our towers need; [] when all hold."""
    if not isinstance(cfg, dict):
        return [f"the file holds a {type(cfg).__name__}, not an object {{...}}"]
    problems = field_problems(cfg, _TOP_SCHEMA)
    if problems:
        return problems
    towers = {"text": (_sub_config(cfg, "text", _TEXT_DEFAULTS), _TEXT_SCHEMA),
              "vision": (_sub_config(cfg, "vision", _VISION_DEFAULTS), _VISION_SCHEMA)}
    for tower, (c, schema) in towers.items():
        problems += field_problems(c, schema, f"{tower}_config.")
    if problems:
        return problems
    for tower, (c, _) in towers.items():
        if c["hidden_size"] % c["num_attention_heads"]:
            problems.append(f"{tower}_config.num_attention_heads={c['num_attention_heads']} does not divide "
                            f"hidden_size={c['hidden_size']}")
    v = towers["vision"][0]
    image, patch = (x[0] if isinstance(x, (list, tuple)) else x for x in (v["image_size"], v["patch_size"]))
    if image % patch:
        problems.append(f"vision_config.image_size={image} is not a multiple of patch_size={patch}")
    return problems


def clip_config_from_hf(cfg: Mapping, where: str = "config.json") -> CLIPConfig:
    """A transformers ``CLIPConfig`` dict (config.json) -> our CLIPConfig, refusing malformed
    values (``_schema_problems``) and what our towers do not implement (MLP ratio other than 4,
    LayerNorm eps other than 1e-5, unknown activation)."""
    problems = _schema_problems(cfg)
    if problems:
        raise ValueError(f"{where}: not a valid Hugging Face CLIP config: " + "; ".join(problems))
    if cfg.get("model_type") not in (None, "clip"):
        raise ValueError(f"{where}: model_type {cfg.get('model_type')!r} is not a CLIP (expected 'clip')")
    t = _sub_config(cfg, "text", _TEXT_DEFAULTS)
    v = _sub_config(cfg, "vision", _VISION_DEFAULTS)
    problems = _unsupported(t, v)
    if problems:
        raise ValueError(f"{where}: this Hugging Face CLIP is not one our towers implement: " + "; ".join(problems))
    image, patch = v["image_size"], v["patch_size"]
    image = image[0] if isinstance(image, (list, tuple)) else image
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return CLIPConfig(
        embed_dim=cfg.get("projection_dim") or t.get("projection_dim") or 512,
        image_resolution=image, vision_layers=v["num_hidden_layers"],
        vision_width=v["hidden_size"], vision_patch_size=patch,
        context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
        transformer_width=t["hidden_size"], transformer_heads=t["num_attention_heads"],
        transformer_layers=t["num_hidden_layers"], vision_heads=v["num_attention_heads"],
        activation=_HF_ACTIVATIONS[t["hidden_act"]])


def _unsupported(t: Mapping, v: Mapping) -> List[str]:
    """What a well-formed config asks for that our towers do not implement."""
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
    for label, value in (("image_size", v["image_size"]), ("patch_size", v["patch_size"])):
        if isinstance(value, (list, tuple)) and len(set(value)) != 1:
            problems.append(f"non-square vision {label} {value}")
    return problems


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
            if value.dim() != 2:  # .t() of a 3-d tensor raises; of a 1-d one silently does nothing
                problems.append(f"{key} has shape {list(value.shape)} (expected a 2-d projection matrix)")
                continue
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
        if () in shapes:  # torch.cat refuses 0-d tensors
            problems.append(f"{prefix}attn q/k/v {kind} include a 0-d tensor (expected a weight or bias)")
            continue
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

    config.json is checked (``clip_config_from_hf``) before the weights are read, and every size
    it declares is compared with the weights' shapes (``CLIPConfig.size_problems``) before the
    caller builds anything from it.

    ``activation``: None takes ``hidden_act`` from config.json; an explicit value wins (with a
    warning when it contradicts the checkpoint). Where the folder ships ``vocab.json``/``merges.txt``
    and CLIP's BPE vocabulary is available locally, they are compared (``check_tokenizer_files``).
    ``weights_file``: which file of the folder to read (default: the first of ``HF_WEIGHT_FILES``)."""
    folder = Path(folder)
    cfg_path = folder / HF_CONFIG_FILE
    config = clip_config_from_hf(read_json(cfg_path, "Hugging Face config"), str(cfg_path))
    name = weights_file or next((n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{folder}: config.json but no weights (expected one of {list(HF_WEIGHT_FILES)})")
    where = str(folder / name)
    sd = hf_to_openai_state_dict(clip_state_dict(_read_hf_weights(folder, name), where), where)
    problems = config.size_problems(sd, _HF_NAMES)
    if problems:
        raise ValueError(f"{cfg_path}: does not describe the weights in {name}: " + "; ".join(problems))
    config = with_activation(config, activation, f"{cfg_path} (hidden_act)")
    _auto_check_tokenizer(folder)
    return sd, config


# --------------------------------------------------------------------------- tokenizer files

def check_tokenizer_files(folder: Union[str, os.PathLike], tokenizer) -> Optional[str]:
    """Compare a checkpoint's ``vocab.json``/``merges.txt`` with ``tokenizer`` (a ClipTokenizer:
    CLIP's BPE). Returns None when they agree (or the folder has neither file), else the first
    difference, which is also issued as a warning naming the file: the model is then used with
    CLIP's BPE, which may not be what it was trained with. A file larger than
    ``MAX_TOKENIZER_FILE_BYTES`` is not read: it cannot be CLIP's, and that is the difference."""
    folder = Path(folder)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    message = _vocab_file_difference(vocab_path, tokenizer) if vocab_path.is_file() else None
    if message is None and merges_path.is_file():
        message = _merges_file_difference(merges_path, tokenizer)
    if message:
        warnings.warn(f"{message}; this checkpoint's tokenizer is not CLIP's BPE vocabulary, and the model is used "
                      "with CLIP's", stacklevel=2)
    return message


def _vocab_file_difference(path: Path, tokenizer) -> Optional[str]:
    try:
        theirs = read_json(path, "tokenizer vocabulary", max_bytes=MAX_TOKENIZER_FILE_BYTES)
    except (OSError, ValueError) as e:  # too large, not JSON: named in the message already
        return str(e)
    if not isinstance(theirs, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in theirs.values()):
        return f"{path} is not a token -> id mapping (got a {type(theirs).__name__})"
    return _vocab_difference(theirs, tokenizer._encoder, path)


def _merges_file_difference(path: Path, tokenizer) -> Optional[str]:
    size = path.stat().st_size
    if size > MAX_TOKENIZER_FILE_BYTES:
        return f"{path} is {size} bytes, far more than CLIP's merges (not read; limit {MAX_TOKENIZER_FILE_BYTES})"
    with open(regular_file(path, "tokenizer merges"), "rb") as f:
        lines = f.read(MAX_TOKENIZER_FILE_BYTES).decode("utf-8", errors="replace").split("\n")
    ours = sorted(tokenizer._ranks, key=tokenizer._ranks.get)
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    return _merges_difference(merges, ours, path)


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
