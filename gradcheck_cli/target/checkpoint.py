"""--checkpoint FILE: load saved weights into the built model before the probe, safely.

`.pt`/`.pth`/`.ckpt`/`.bin`/`.tar` files are read with `torch.load(weights_only=True)`: the restricted
unpickler only rebuilds tensors and plain containers, so a file that holds pickled Python objects (a
custom class, a `__reduce__` payload that would run a command) is refused before any of its code
runs, and the refusal names the global it met. Besides torch's own allowlist, the numpy scalar
globals (`numpy._core.multiarray.scalar`, or `numpy.core...` as numpy 1 wrote it, `numpy.dtype` and
the numeric dtype classes) are allowed, for the `np.float64(0.93)` a training loop stores as
metadata; numpy arrays and every other global stay refused. `.safetensors` files hold nothing but
tensors and are read with the optional `safetensors` package (`pip install 'gradcheck[safetensors]'`).

The file may hold a state_dict, or a training checkpoint dict whose "state_dict", "model" or
"model_state_dict" entry is the state_dict (a Lightning `.ckpt` keeps it under "state_dict", next to
its hyper-parameters and loop state). Keys that all carry one prefix the model's keys lack are
matched to the bare model: "module." (DataParallel/DDP), "_orig_mod." (a `torch.compile`d model),
"model." (the attribute of a LightningModule that holds the network); a prefix is stripped only when
every key carries it and the stripped keys match the model better than the keys as saved. A
state_dict that does not fit the model is reported in one line: missing keys, unexpected keys and
shape mismatches.

Memory stays bounded by what the model needs. torch.save's zip format is memory-mapped
(`torch.load(mmap=True)`): the tensors stay in the file until their values are copied into the model,
so the optimizer state of a large training checkpoint is never read. torch.save stores its records
uncompressed; a zip whose records declare more than MAX_INFLATION times the file's size (a 1 MB file
whose compressed record would inflate to 1 GiB) is refused from its directory, before anything is
inflated. Files without the zip layout (torch's legacy format, safetensors) are read whole, which
costs about their size on disk.

Reading happens before the model is built (a bad file stops the scan before any user code runs);
loading copies the values into the model's own parameters and buffers.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.text import exception_text

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")
"""torch.save files: .ckpt (Lightning), .bin (Hugging Face pytorch_model.bin), .tar (model_best.pth.tar)."""
SAFETENSORS_SUFFIX = ".safetensors"
STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict")
"""Entries of a training-checkpoint dict that hold the model's state_dict, tried in this order."""
MAX_PREFIX_DEPTH = 3
"""Shared key prefixes stripped one after another at most ('_orig_mod.module.model.')."""
MAX_INFLATION = 4
"""A zip checkpoint's records may declare at most this many times the file's size. torch.save never
compresses, so its records add up to the file's size; float weights that someone compressed
afterwards shrink by well under this factor, while an inflating file (zeros) shrinks a thousandfold."""
MAX_LISTED = 5
"""Keys listed per kind of mismatch before '... and N more' (the message stays one line)."""


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
                        "use a torch.save file (.pt, .pth, .ckpt, .bin, .tar) or a .safetensors file")
    return _state_dict_of(loaded, path)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Copy `state` into the model's parameters and buffers; every key and shape must match."""
    expected = model.state_dict()
    state, stripped = _strip_shared_prefix(state, expected)
    state = _with_tied_names(model, state)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (checkpoint {_shape(state[k])}, model {_shape(expected[k])})"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        parts = [f"{label}: {_listing(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                 if keys]
        keys_as = f" (keys read without their prefix '{stripped}')" if stripped else ""
        raise UserError(f"checkpoint {path} does not match the model {type(model).__name__}{keys_as}: "
                        + "; ".join(parts) + "; save it from the same model definition "
                        "(torch.save(model.state_dict(), ...))")
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a complex tensor into a float weight
        raise UserError(f"checkpoint {path} could not be loaded into {type(model).__name__}: "
                        f"{exception_text(exc)}") from exc


def _read_torch(path: str) -> Any:
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _refuse_inflating_zip(path)
    try:
        with warnings.catch_warnings(), _numpy_scalar_globals():
            # Older pickle protocols make torch warn; the file is still read (or refused) safely.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(f"refusing to load {path}: it contains pickled Python objects that could "
                            f"run code ({_unpickler_reason(exc)}); save a plain state_dict with "
                            "torch.save(model.state_dict(), ...)") from None
        raise _corrupt(path, exc) from None
    except (OSError, EOFError, RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise _corrupt(path, exc) from None


def _refuse_inflating_zip(path: str) -> None:
    """UserError when the zip's records declare far more bytes than the file holds (read from the
    zip's directory: nothing is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load says what is wrong with it
    size = os.path.getsize(path)
    declared = sum(record.file_size for record in records)
    if declared > MAX_INFLATION * size:
        largest = max(records, key=lambda record: record.file_size)
        raise UserError(f"refusing to load --checkpoint {path}: its records would inflate to "
                        f"{_bytes(declared)} from a {_bytes(size)} file ({largest.filename} alone to "
                        f"{_bytes(largest.file_size)}; gradcheck reads at most {MAX_INFLATION}x the file's size); "
                        "torch.save never compresses: save the weights again with "
                        "torch.save(model.state_dict(), ...)")


@contextmanager
def _numpy_scalar_globals() -> Iterator[None]:
    """Let weights_only=True rebuild numpy scalars (np.float64(0.93) as a checkpoint's metadata).

    Only the scalar constructor, numpy.dtype and the numeric/string dtype classes: they build a
    number from its bytes and call nothing else. numpy is optional: without it nothing is added."""
    try:
        import numpy
    except ImportError:
        yield
        return
    scalar = (getattr(numpy, "_core", None) or numpy.core).multiarray.scalar  # numpy 2 renamed numpy.core
    # A file saved under numpy 1 names the scalar constructor numpy.core..., under numpy 2 numpy._core...
    allowed: list[Any] = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                          numpy.dtype]
    allowed += list(dict.fromkeys(type(numpy.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSU"))
    with torch.serialization.safe_globals(allowed):
        yield


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


def _with_tied_names(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The state with every name of a tied parameter (one Parameter under several names, like a
    language model's lm_head.weight = embedding weight) given the tensor stored under another of its
    names. safetensors' save_model and transformers' save_pretrained store a tied parameter once,
    under one name, and safetensors' load_model accepts such a file the same way."""
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    filled: dict[str, torch.Tensor] = {}
    for names in names_of.values():
        stored = next((name for name in names if name in state), None)
        if stored is not None:
            filled.update({name: state[stored] for name in names if name not in state})
    if not filled:
        return state
    with_tied: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    with_tied.update(filled)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        with_tied._metadata = metadata  # type: ignore[attr-defined]
    return with_tied


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_shared_prefix(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                         ) -> tuple[Mapping[str, torch.Tensor], str]:
    """The state with the prefix all its keys share stripped ('module.', '_orig_mod.', 'model.'),
    when the stripped keys match the model's better; and the prefix stripped ('' for none)."""
    best_prefix = ""
    best_overlap = len(set(state) & set(expected))
    keys, prefix = list(state), ""
    for _ in range(MAX_PREFIX_DEPTH):
        heads = {key.split(".", 1)[0] for key in keys}
        if len(heads) != 1 or not all("." in key for key in keys):
            break
        head = heads.pop() + "."
        prefix += head
        keys = [key[len(head):] for key in keys]
        overlap = len(set(keys) & set(expected))
        if overlap > best_overlap:
            best_prefix, best_overlap = prefix, overlap
    return (_without_prefix(state, best_prefix), best_prefix) if best_prefix else (state, "")


def _without_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Mapping[str, torch.Tensor]:
    """The keys without `prefix`, keeping torch's `_metadata` (module versions, which
    load_state_dict reads; its keys are module names: 'model.0' -> '0', 'model' -> '')."""
    stripped: OrderedDict[str, torch.Tensor] = OrderedDict(
        (key[len(prefix):], value) for key, value in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        stripped._metadata = OrderedDict(  # type: ignore[attr-defined]
            ((name + ".")[len(prefix):].removesuffix("."), value) for name, value in metadata.items()
            if (name + ".").startswith(prefix))
    return stripped


def _corrupt(path: str, exc: BaseException) -> UserError:
    size = os.path.getsize(path)
    what = "it is empty" if size == 0 else f"it is not a readable checkpoint ({exception_text(exc)})"
    return UserError(f"cannot read --checkpoint {path}: {what}; the file may be truncated or corrupted, "
                     "save it again with torch.save(model.state_dict(), ...)")


def _unpickler_reason(exc: BaseException) -> str:
    """The restricted unpickler's own reason, one short line: 'it needs the global posix.system'.

    torch's message is several paragraphs; the global it refused is named in 'GLOBAL name'
    (torch >= 2.4) or in the paragraph that is neither the generic preamble nor the pointer to
    the documentation (older versions).
    """
    text = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return f"it needs the global {named.group(1)}, which weights_only=True refuses"
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    for paragraph in paragraphs[1:]:
        if paragraph and not paragraph.startswith(("Check the documentation", "Please file an issue")):
            reason = paragraph.removeprefix("WeightsUnpickler error: ")
            return reason[:160]
    return "not a plain state_dict"


def _bytes(count: int) -> str:
    """1.0 GiB, 1.0 MiB, 512 bytes."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")
