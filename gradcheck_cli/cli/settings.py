"""The settable keys of a scan, their validation, and the layers that set them.

One table (`SETTINGS`) serves every place a scan can be configured: a recipe's `defaults:` and
`scans:`, `[tool.gradcheck]` in pyproject.toml and the options of `gradcheck scan`/`gradcheck run`,
so a key is spelled, typed and checked the same way everywhere. Values resolve in layers, each
value keeping the name of the layer that set it (for `--show-config`):

    built-in default < pyproject.toml [tool.gradcheck] < recipe defaults < recipe scan < command line

Keys are flat and spelled as in a recipe: `optimizer.name`, `optimizer.lr`,
`thresholds.vanish_relative`. No torch here (`--show-config` must stay fast).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from gradcheck_cli.analyse.thresholds import REGISTRY, ThresholdEntry, Thresholds, check_value
from gradcheck_cli.config import OPTIMIZERS, PRECISIONS, ScanConfig
from gradcheck_cli.report.gate import UNVERIFIED, valid_fail_on_words

Path_ = tuple[str | int, ...]
"""Where a value sits inside a configuration document: ("scans", 1, "optimizer", "lr")."""

BUILTIN_SOURCE = "built-in default"


class SettingError(ValueError):
    """A setting that is unknown or invalid; `path` locates it inside its document."""

    def __init__(self, path: Path_, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def key_text(path: Path_) -> str:
    """("scans", 1, "batchs") -> "scans[1].batchs"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{printable(part)}" if text else printable(part))
    return text


def printable(text: str, limit: int = 60) -> str:
    """`text` for a one-line message: control characters escaped, long text shortened."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shown(value: Any) -> str:
    """A value as the user wrote it, for 'got ...' in messages."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{printable(value)}'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value) if isinstance(value, (int, float)) else f"a {type(value).__name__}"


def did_you_mean(word: str, valid: list[str]) -> str:
    """"; did you mean 'batches'?" or "; valid: a, b, c"."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid: {', '.join(valid)}"


# ------------------------------------------------------------------------------------- parsers
# Each parser takes a value as YAML/TOML/argv gave it and returns the normalised value, or raises
# ValueError with "expected ..., got ...".


def _int(minimum: int, words: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        # bool is an int in Python, but `batches: true` is a mistake, not 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected {words}, got {shown(value)}")
        return value

    return parse


def _positive_float(value: Any) -> float:
    # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string: accept numeric strings.
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive number, got {shown(value)}")
    return number


MAX_SEED = 2**63 - 1
"""The largest --seed: torch seeds are 64-bit (torch.manual_seed refuses 2**64 and more) and each
probe batch is drawn with the seed plus its index, so half the range is kept for that."""


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"expected an integer from 0 to {MAX_SEED} (2**63 - 1), got {shown(value)}")
    return value


def _timeout(value: Any) -> float:
    from gradcheck_cli.target.guards import MAX_TIMEOUT

    seconds = _positive_float(value)
    if seconds > MAX_TIMEOUT:
        raise ValueError(f"expected at most {MAX_TIMEOUT:g} seconds (leave it out for no limit), "
                         f"got {shown(value)}")
    return seconds


def _optimizer(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in OPTIMIZERS:
        hint = did_you_mean(value.strip().lower(), list(OPTIMIZERS)) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(OPTIMIZERS)}, got {shown(value)}{hint}")
    return value.strip().lower()


_DEVICE = re.compile(r"^[a-z_]+(:\d+)?$")


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value.strip()):
        raise ValueError(f"expected a device like cpu, cuda or cuda:0, got {shown(value)}")
    return value.strip()


def _fail_on(value: Any) -> tuple[str, ...]:
    words: list[Any]
    if isinstance(value, str):
        words = value.split(",")
    elif isinstance(value, (list, tuple)):
        words = list(value)
    else:
        words = [value]
    valid = valid_fail_on_words()
    for word in words:
        if not isinstance(word, str):
            raise ValueError(f"expected finding kinds or statuses (e.g. [exploding, nonfinite]), "
                             f"got {shown(word)}")
        if word.strip().lower() not in valid:
            raise ValueError(f"unknown finding kind or status '{printable(word.strip())}'"
                             f"{did_you_mean(word.strip().lower(), valid)}")
    parsed = tuple(word.strip().lower() for word in words)
    if not parsed:
        raise ValueError("expected at least one finding kind or status, or 'none'")
    return parsed


def _input_shape(value: Any) -> tuple[int, ...]:
    parts: list[Any]
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[xX,*]", value.strip().strip("()[]")) if p.strip()]
        parts = [int(p) if p.isdigit() else p for p in parts]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    if not parts or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in parts):
        raise ValueError(f"expected a per-sample shape like [3, 32, 32] or '3x32x32', got {shown(value)}")
    return tuple(parts)


def _precision(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in PRECISIONS:
        hint = did_you_mean(value.strip().lower(), list(PRECISIONS)) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {', '.join(PRECISIONS)}, got {shown(value)}{hint}")
    return value.strip().lower()


def _loss_scale(value: Any) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "dynamic":
        return "dynamic"
    try:
        return _positive_float(value)
    except ValueError:
        raise ValueError(f"expected a positive number or 'dynamic', got {shown(value)}") from None


def _bool(value: Any) -> bool:
    # Only a real boolean: `verify: yes` is one in YAML 1.1, but "false" (a string) or 0 is a mistake.
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {shown(value)}")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a file path, got {shown(value)}")
    return value.strip()


# ------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Setting:
    key: str
    """Flat key as a recipe spells it: 'batches', 'optimizer.lr', 'thresholds.min_stack'."""
    parse: Callable[[Any], Any]
    help: str
    option: str | None = None
    """The command-line option that sets it, if any."""
    per_scan: bool = False
    """Only a scan (or the command line) sets it: it describes one model, not a default."""


def _threshold_parser(item: ThresholdEntry) -> Callable[[Any], Any]:
    """A positive integer (counts) or number, then inside the threshold's domain (thresholds.py)."""
    base = _int(1, "a positive integer") if item.domain == "count" else _positive_float

    def parse(value: Any) -> Any:
        number = base(value)
        try:
            return check_value(item.name, number)
        except ValueError as exc:
            raise ValueError(f"{exc}, got {shown(value)}") from None

    return parse


def _threshold_settings() -> list[Setting]:
    """One setting per entry of the thresholds registry (`gradcheck list thresholds`)."""
    return [Setting(f"thresholds.{item.name}", _threshold_parser(item), item.meaning) for item in REGISTRY]


SETTINGS: dict[str, Setting] = {s.key: s for s in [
    Setting("batches", _int(1, "a positive integer"), "probe batches", "--batches"),
    Setting("batch_size", _int(1, "a positive integer"), "samples per probe batch", "--batch-size"),
    Setting("seed", _seed, "seed of the batches and dropout", "--seed"),
    Setting("device", _device, "cpu, cuda or cuda:N", "--device"),
    Setting("steps", _int(0, "an integer >= 0"), "optimizer steps between probe batches", "--steps"),
    Setting("optimizer.name", _optimizer, "optimizer for steps", "--optimizer"),
    Setting("optimizer.lr", _positive_float, "learning rate for steps", "--lr"),
    Setting("fail_on", _fail_on, "finding kinds/statuses that fail the gate", "--fail-on"),
    Setting("timeout", _timeout, "seconds one scan may take", "--timeout"),
    Setting("verify", _bool, "apply each recommendation to a copy and probe it again", "--verify"),
    Setting("precision", _precision, "autocast dtype of the probe: fp32, bf16 or fp16", "--precision"),
    Setting("loss_scale", _loss_scale, "loss scale of the probe's backward: a number or dynamic", "--loss-scale"),
    Setting("input_shape", _input_shape, "per-sample input shape", "--input-shape", per_scan=True),
    Setting("checkpoint", _path, "state_dict loaded before the probe", "--checkpoint", per_scan=True),
    *_threshold_settings(),
]}

# The first-level keys of a settings mapping (optimizer and thresholds are nested mappings).
GROUPS = ("optimizer", "thresholds")


def top_level_keys(per_scan: bool) -> list[str]:
    keys = [s.key.split(".")[0] for s in SETTINGS.values() if per_scan or not s.per_scan]
    return list(dict.fromkeys(keys))


def _sub_keys(group: str) -> list[str]:
    return [k.split(".", 1)[1] for k in SETTINGS if k.startswith(group + ".")]


def parse_settings(mapping: Mapping[Any, Any], base: Path_, per_scan: bool,
                   extra_keys: tuple[str, ...] = ()) -> dict[str, tuple[Any, Path_]]:
    """Validate a settings mapping -> {flat key: (value, path of the key)}.

    `per_scan` admits the keys that only a scan sets; `extra_keys` are keys the caller handles
    itself (a scan's name and target). Raises SettingError locating the first problem.
    """
    out: dict[str, tuple[Any, Path_]] = {}
    valid = list(extra_keys) + top_level_keys(per_scan)
    for key, value in mapping.items():
        path = (*base, key) if isinstance(key, str) else base
        if not isinstance(key, str):
            raise SettingError(base, f"expected a key name, got {shown(key)}")
        if key in extra_keys:
            continue
        if key not in valid:
            if key in top_level_keys(True):
                raise SettingError(path, f"'{key}' describes one model: set it in a scan, not here")
            raise SettingError(path, f"unknown key '{printable(key)}'{did_you_mean(key, valid)}")
        if key in GROUPS:
            out.update(_parse_group(key, value, path))
        else:
            out[key] = (_parse_one(key, value, path), path)
    return out


def _parse_group(group: str, value: Any, path: Path_) -> dict[str, tuple[Any, Path_]]:
    if group == "optimizer" and isinstance(value, str):  # `optimizer: adam` names it alone
        return {"optimizer.name": (_parse_one("optimizer.name", value, path), path)}
    if not isinstance(value, Mapping):
        expected = "{name: sgd|adam|adamw, lr: 0.01}" if group == "optimizer" else \
            f"a mapping of {', '.join(_sub_keys(group))}"
        raise SettingError(path, f"expected {expected}, got {shown(value)}")
    out = {}
    for sub, sub_value in value.items():
        if not isinstance(sub, str):
            raise SettingError(path, f"expected a key name, got {shown(sub)}")
        sub_path = (*path, sub)
        if sub not in _sub_keys(group):
            raise SettingError(sub_path, f"unknown key '{printable(sub)}'{did_you_mean(sub, _sub_keys(group))}")
        out[f"{group}.{sub}"] = (_parse_one(f"{group}.{sub}", sub_value, sub_path), sub_path)
    return out


def _parse_one(key: str, value: Any, path: Path_) -> Any:
    try:
        return SETTINGS[key].parse(value)
    except ValueError as exc:
        raise SettingError(path, str(exc)) from None


def parse_option(key: str, value: Any) -> Any:
    """Validate a command-line value; the error names the option."""
    try:
        return SETTINGS[key].parse(value)
    except ValueError as exc:
        raise SettingError((), f"{SETTINGS[key].option}: {exc}") from None


# ------------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Sourced:
    value: Any
    source: str
    """Where the value came from: 'built-in default', 'pyproject.toml [tool.gradcheck]', ..."""


Layer = dict[str, Sourced]


def builtin_layer() -> Layer:
    config, thresholds = ScanConfig(), Thresholds()
    values: dict[str, Any] = {
        "batches": config.batches, "batch_size": config.batch_size, "seed": config.seed,
        "device": config.device, "steps": config.steps, "optimizer.name": config.optimizer,
        "optimizer.lr": config.lr, "fail_on": config.fail_on, "timeout": config.timeout, "verify": config.verify,
        "precision": config.precision, "loss_scale": config.loss_scale,
        "input_shape": config.input_shape, "checkpoint": config.checkpoint,
    }
    values.update({f"thresholds.{f.name}": getattr(thresholds, f.name) for f in fields(Thresholds)})
    assert set(values) == set(SETTINGS), "every setting needs a built-in default"
    return {key: Sourced(value, BUILTIN_SOURCE) for key, value in values.items()}


@dataclass(frozen=True)
class Resolved:
    """Every setting of one scan, with the layer each value came from."""

    values: dict[str, Sourced] = field(default_factory=builtin_layer)

    def scan_config(self) -> ScanConfig:
        v = {key: s.value for key, s in self.values.items()}
        return ScanConfig(
            batches=v["batches"], batch_size=v["batch_size"], seed=v["seed"], device=v["device"],
            steps=v["steps"], optimizer=v["optimizer.name"], lr=v["optimizer.lr"],
            input_shape=v["input_shape"], fail_on=v["fail_on"], checkpoint=v["checkpoint"],
            timeout=v["timeout"], verify=v["verify"], precision=v["precision"], loss_scale=v["loss_scale"])

    def thresholds(self) -> Thresholds:
        return replace(Thresholds(), **{f.name: self.values[f"thresholds.{f.name}"].value
                                        for f in fields(Thresholds)})

    def rows(self) -> list[tuple[str, str, str]]:
        """(key, value as text, source) for --show-config, in table order."""
        return [(key, value_text(self.values[key].value), self.values[key].source) for key in SETTINGS]


def unverified_gate_error(resolved: Resolved) -> str | None:
    """The message when fail_on holds "unverified" but verify is off: that gate judges the statuses
    --verify measures, and without it there are none (every recommendation would fail it)."""
    fail_on, verify = resolved.values["fail_on"], resolved.values["verify"]
    if UNVERIFIED not in fail_on.value or verify.value:
        return None
    return (f"--fail-on unverified needs --verify (fail_on is set by {fail_on.source}); add --verify, "
            "or verify: true in the recipe or [tool.gradcheck]")


def resolve(*layers: Layer) -> Resolved:
    """Later layers win; the built-in defaults are the first layer."""
    merged = builtin_layer()
    for layer in layers:
        merged.update(layer)
    return Resolved(merged)


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"  # as a recipe or pyproject.toml writes it
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return "x".join(str(v) for v in value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def show_config_text(title: str, resolved: Resolved) -> str:
    """Aligned lines 'key  value  source' under a title line, for --show-config."""
    rows = resolved.rows()
    key_width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [title] + [f"  {k:<{key_width}}  {v:<{value_width}}  {s}" for k, v, s in rows]
    return "\n".join(lines) + "\n"
