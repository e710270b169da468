"""Every weight file format, read (and our own written) in one package: file <-> tensors <-> model.

Modules, each importing only those below it in this list:

* ``dispatch``: any checkpoint argument -> model + tokenizer + config (``load_model``,
  ``read_checkpoint`` + ``model_and_tokenizer``); ``export``: write an exported folder.
* ``checkpoints``: our training checkpoints and run folders (``FORMAT``, ``checkpoint_file``);
  ``official``: official CLIP4Clip ``pytorch_model.bin.N``; ``adapter_state``: adapter-only
  state dicts.
* ``initial``: a new run's model with its first weights (``build_model``).
* ``clip_weights``: CLIP from a released name, a Hugging Face or OpenCLIP folder or a file
  (``load_clip``); ``hf``, ``openclip``: those two layouts.
* ``exported``, ``rebuild``: reading exported folders; a model from ``model_args`` + state.
* ``clip_state``: OpenAI-layout CLIP state dicts -> CLIP.
* ``files``: reading ``.pt`` / ``.bin`` without running code, safetensors, checked loading;
  ``torchscript``: OpenAI's TorchScript archives taken apart without ``torch.jit``.
"""
from .checkpoints import FORMAT, checkpoint_file, load_checkpoint, load_model_from_checkpoint, read_init_checkpoint
from .clip_weights import PRETRAINED, available_models, load_clip
from .dispatch import Loaded, load_model, model_and_tokenizer, read_checkpoint, resolve_source
from .exported import is_exported_folder, load_exported
from .files import CheckpointReadError, load_state_checked, read_torch_file
from .initial import build_model

__all__ = ["FORMAT", "PRETRAINED", "CheckpointReadError", "Loaded", "available_models", "build_model",
           "checkpoint_file", "is_exported_folder", "load_checkpoint", "load_clip", "load_exported",
           "load_model", "load_model_from_checkpoint", "load_state_checked", "model_and_tokenizer",
           "read_checkpoint", "read_init_checkpoint", "read_torch_file", "resolve_source"]
