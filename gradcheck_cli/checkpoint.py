"""--checkpoint FILE: load saved weights into the built model before the probe, safely.

`.pt`/`.pth` files are read with `torch.load(weights_only=True)`: the restricted unpickler only
rebuilds tensors and plain containers, so a file that holds pickled Python objects (a custom class,
a `__reduce__` payload that would run a command) is refused before any of its code runs.
`.safetensors` files hold nothing but tensors and are read with the optional `safetensors`
package (`pip install 'gradcheck[safetensors]'`).

The file may hold a state_dict, or a training checkpoint dict whose "state_dict", "model" or
"model_state_dict" entry is the state_dict. Keys saved from an `nn.DataParallel`/DDP wrapper
("module.fc.weight") are matched to the bare model when every key carries the prefix. A state_dict
that does not fit the model is reported in one line: missing keys, unexpected keys and shape
mismatches. Reading happens before the model is built (a bad file stops the scan before any user
code runs); loading copies the values into the model's own parameters and buffers.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .text import exception_text

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
"""Entries of a training-checkpoint dict that hold the model's state_dict, tried in this order."""
DATA_PARALLEL_PREFIX = "module."
MAX_LISTED = 5
"""Keys listed per kind of mismatch before '... and N more' (the message stays one line)."""


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load the state_dict in `path` into `model` (strict); UserError when it cannot or does not fit."""
    apply_state_dict(model, read_checkpoint(path), path)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The state_dict stored in `path` (.pt, .pth or .safetensors), as tensors on the CPU."""
    if not os.path.exists(path):
        raise UserError(f"--checkpoint {path}: no such file; give the path of a .pt, .pth or "
                        ".safetensors state_dict")
    if os.path.isdir(path):
        raise UserError(f"--checkpoint {path} is a directory; give the path of a .pt, .pth or "
                        ".safetensors file inside it")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TORCH_SUFFIXES:
        loaded = _read_torch(path)
    elif suffix == SAFETENSORS_SUFFIX:
        loaded = _read_safetensors(path)
    else:
        raise UserError(f"--checkpoint {path}: unknown checkpoint format '{suffix or '(no extension)'}'; "
                        "use a .pt/.pth file (torch.save(model.state_dict(), ...)) or a .safetensors file")
    return _state_dict_of(loaded, path)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Copy `state` into the model's parameters and buffers; every key and shape must match."""
    expected = model.state_dict()
    state = _strip_data_parallel_prefix(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (checkpoint {_shape(state[k])}, model {_shape(expected[k])})"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {_listing(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if keys]
        raise UserError(f"checkpoint {path} does not match the model {type(model).__name__}: "
                        + "; ".join(parts) + "; save it from the same model definition "
                        "(torch.save(model.state_dict(), ...))")
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a complex tensor into a float weight
        raise UserError(f"checkpoint {path} could not be loaded into {type(model).__name__}: "
                        f"{exception_text(exc)}") from exc


def _read_torch(path: str) -> Any:
    try:
        with warnings.catch_warnings():
            # Older pickle protocols make torch warn; the file is still read (or refused) safely.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(f"refusing to load {path}: it contains pickled Python objects that could "
                            f"run code ({_unpickler_reason(exc)}); save a plain state_dict with "
                            "torch.save(model.state_dict(), ...)") from None
        raise _corrupt(path, exc) from None
    except (OSError, EOFError, RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise _corrupt(path, exc) from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"reading {path} needs the safetensors package: pip install 'gradcheck[safetensors]' "
                        "(or pip install safetensors)") from None
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError has no stable import path across versions
        raise _corrupt(path, exc) from None


def _state_dict_of(loaded: Any, path: str) -> dict[str, torch.Tensor]:
    """The state_dict itself, or the one inside a training-checkpoint dict."""
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        for entry in STATE_DICT_ENTRIES:
            if isinstance(loaded.get(entry), Mapping):
                loaded = loaded[entry]
                break
    if isinstance(loaded, nn.Module):  # cannot happen with weights_only, kept for safety
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping) or not _is_state_dict(loaded):
        if isinstance(loaded, Mapping):
            found = f"a dict with keys {_listing([str(k) for k in loaded])}" if loaded else "an empty dict"
        else:
            found = f"a {type(loaded).__name__}"
        raise UserError(f"--checkpoint {path} does not hold a state_dict (found {found}); save one with "
                        "torch.save(model.state_dict(), ...) or store it under 'state_dict'")
    # The mapping itself, not a copy: torch's OrderedDict carries `_metadata` (module versions)
    # that load_state_dict uses.
    return loaded if isinstance(loaded, dict) else dict(loaded)


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_data_parallel_prefix(state: Mapping[str, torch.Tensor],
                                expected: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """'module.fc.weight' -> 'fc.weight' when the file was saved from a DataParallel/DDP wrapper."""
    n = len(DATA_PARALLEL_PREFIX)
    if (state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state)
            and not any(k.startswith(DATA_PARALLEL_PREFIX) for k in expected)):
        return {k[n:]: v for k, v in state.items()}
    return state


def _corrupt(path: str, exc: BaseException) -> UserError:
    size = os.path.getsize(path)
    what = "it is empty" if size == 0 else f"it is not a readable checkpoint ({exception_text(exc)})"
    return UserError(f"cannot read --checkpoint {path}: {what}; the file may be truncated or corrupted, "
                     "save it again with torch.save(model.state_dict(), ...)")


def _unpickler_reason(exc: BaseException) -> str:
    """The restricted unpickler's own reason ('unsupported GLOBAL posix.system ...'), one short line.

    torch's message is several paragraphs; the reason is the paragraph that is neither its
    generic preamble nor its pointer to the documentation.
    """
    paragraphs = [" ".join(p.split()) for p in str(exc).split("\n\n")]
    for paragraph in paragraphs[1:]:
        if paragraph and not paragraph.startswith(("Check the documentation", "Please file an issue")):
            reason = paragraph.removeprefix("WeightsUnpickler error: ")
            return reason[:160]
    return "not a plain state_dict"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")
