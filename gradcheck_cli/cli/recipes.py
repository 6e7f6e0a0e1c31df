"""YAML recipes: `gradcheck run RECIPE.yaml` runs the scans a recipe lists.

    version: 1
    defaults: {batches: 3, fail_on: [exploding, nonfinite], thresholds: {...}}
    scans:
      - name: mlp
        target: models/mlp.py        # relative paths resolve against the recipe's folder
        input_shape: [32]
        batches: 1                   # any default key, overridden for this scan

The values come from `yaml.safe_load` only (no object construction). Line numbers for messages
come from `yaml.compose` of the same text with the SafeLoader: the node tree carries start marks
and constructs nothing. Every problem raises RecipeError, one line:
`FILE:LINE: key 'scans[1].batchs': unknown key 'batchs'; did you mean 'batches'?`.
Keys and values are validated by settings.parse_settings, the validator pyproject.toml shares.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gradcheck_cli.cli.settings import (
    Layer,
    Path_,
    SettingError,
    Sourced,
    did_you_mean,
    key_text,
    parse_settings,
    printable,
    shown,
)
from gradcheck_cli.errors import UserError

VERSION = 1
TOP_KEYS = ("version", "defaults", "scans")
SCAN_KEYS = ("name", "target")
_DOTTED_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class RecipeError(UserError):
    """A recipe that cannot be read or is invalid; the message starts with FILE:LINE."""


@dataclass(frozen=True)
class RecipeScan:
    """One scan of a recipe, before the command line and pyproject layers are added."""

    name: str
    target: str
    """Ready for resolve_target: a file path resolved against the recipe's folder, or as written."""
    defaults: Layer
    """The recipe's `defaults:` (sources say recipe FILE:LINE)."""
    overrides: Layer
    """The keys this scan sets itself."""


@dataclass(frozen=True)
class Recipe:
    path: Path
    scans: tuple[RecipeScan, ...]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    shown_path = str(path)
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"no such recipe file: {shown_path}; check the path")
    if p.is_dir():
        raise RecipeError(f"{shown_path} is a directory, not a recipe; pass a YAML file, "
                          f"e.g. {os.path.join(shown_path, 'recipe.yaml')}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{shown_path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {shown_path}: {exc.strerror or exc}") from None
    return parse_recipe(text, shown_path, p.resolve().parent)


def parse_recipe(text: str, shown_path: str, folder: Path) -> Recipe:
    """Validate recipe text; `shown_path` names it in messages, `folder` anchors relative targets."""
    root, data = _load_yaml(text, shown_path)
    where = _Locator(shown_path, root)
    if data is None:
        raise RecipeError(f"{shown_path}:1: the recipe is empty; expected a mapping with "
                          f"'version: {VERSION}' and 'scans:'")
    if not isinstance(data, Mapping):
        where.fail((), f"expected a mapping at the top level (version, defaults, scans), got {shown(data)}")
    for key in data:
        if not isinstance(key, str):
            where.fail((), f"expected a key name at the top level, got {shown(key)}")
        if key not in TOP_KEYS:
            where.fail((key,), f"unknown key '{printable(key)}'{did_you_mean(key, list(TOP_KEYS))}")
    if "version" not in data:
        where.fail((), f"missing key 'version'; add 'version: {VERSION}' at the top")
    version = data["version"]
    if isinstance(version, bool) or version != VERSION:
        where.fail(("version",), f"unsupported recipe version {shown(version)}; expected {VERSION}")

    defaults_data = data.get("defaults")
    if defaults_data is None:
        defaults_data = {}
    if not isinstance(defaults_data, Mapping):
        where.fail(("defaults",), f"expected a mapping of default settings, got {shown(defaults_data)}")
    defaults = where.settings(defaults_data, ("defaults",), per_scan=False)

    scans_data = data.get("scans")
    if "scans" not in data:
        where.fail((), "missing key 'scans'; list the scans to run, e.g. "
                       "scans: [{name: mlp, target: model.py}]")
    if not isinstance(scans_data, list):
        where.fail(("scans",), f"expected a list of scans, got {shown(scans_data)}")
    if not scans_data:
        where.fail(("scans",), "the list of scans is empty; add at least one, e.g. "
                               "- {name: mlp, target: model.py}")
    scans: list[RecipeScan] = []
    names: dict[str, int] = {}
    for index, scan_data in enumerate(scans_data):
        scan = _parse_scan(scan_data, index, where, folder, defaults)
        if scan.name in names:
            where.fail(("scans", index, "name"),
                       f"duplicate scan name '{printable(scan.name)}' (also scans[{names[scan.name]}]); "
                       f"give every scan its own name")
        names[scan.name] = index
        scans.append(scan)
    return Recipe(Path(shown_path), tuple(scans))


def _parse_scan(data: Any, index: int, where: _Locator, folder: Path, defaults: Layer) -> RecipeScan:
    path: Path_ = ("scans", index)
    if not isinstance(data, Mapping):
        where.fail(path, f"expected a scan mapping with name and target, got {shown(data)}")
    overrides = where.settings(data, path, per_scan=True, extra_keys=SCAN_KEYS)
    for key in SCAN_KEYS:
        if key not in data:
            example = "name: mlp" if key == "name" else "target: model.py (or builtin:NAME, pkg.module:attr)"
            where.fail(path, f"missing required key '{key}' in this scan; add e.g. '{example}'")
        if not isinstance(data[key], str) or not data[key].strip():
            where.fail((*path, key), f"expected a non-empty string, got {shown(data[key])}")
    target = _resolve_target(data["target"].strip(), folder, where, (*path, "target"))
    if "checkpoint" in overrides:
        checkpoint = overrides["checkpoint"]
        overrides["checkpoint"] = Sourced(_relative_to(folder, checkpoint.value), checkpoint.source)
    return RecipeScan(data["name"].strip(), target, defaults, overrides)


def _resolve_target(target: str, folder: Path, where: _Locator, path: Path_) -> str:
    """Files resolve against the recipe's folder (and must exist); builtin:NAME and
    pkg.module:attr stay as written."""
    if target.startswith("builtin:") or (_DOTTED_TARGET.match(target) and ".py:" not in target):
        return target
    file_part, sep, name = target.partition(".py:")
    file_part = file_part + ".py" if sep else target
    resolved = _relative_to(folder, file_part)
    if not os.path.isfile(resolved):
        problem = "is a directory, not a model file" if os.path.isdir(resolved) else "no such file"
        where.fail(path, f"{problem}: {resolved} (relative paths resolve against the recipe's "
                         f"folder {_shown(folder)})")
    return f"{resolved}:{name}" if sep else resolved


def _relative_to(folder: Path, path: str) -> str:
    """`path` resolved against `folder`, shown relative to the cwd when that is shorter."""
    absolute = Path(path).expanduser()
    if not absolute.is_absolute():
        absolute = folder / absolute
    return _shown(absolute)


def _shown(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return relative if len(relative) < len(str(path)) else str(path)


def _load_yaml(text: str, shown_path: str) -> tuple[yaml.Node | None, Any]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # marks only; constructs nothing
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        context = " ".join(str(exc.context).split()) if exc.context and exc.problem else ""
        detail = f"{problem} ({context})" if context else problem
        if isinstance(exc, yaml.constructor.ConstructorError):
            detail += "; a recipe holds plain values only (it is read with yaml.safe_load)"
        raise RecipeError(f"{shown_path}:{line}: invalid YAML: {printable(detail, 300)}") from None
    except yaml.YAMLError as exc:  # ReaderError (control characters) and others without a mark
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
        detail = " ".join(str(exc).split())
        raise RecipeError(f"{shown_path}:{line}: invalid YAML: {printable(detail, 300)}") from None
    except RecursionError:
        raise RecipeError(f"{shown_path}:1: invalid YAML: nested too deeply") from None
    _reject_duplicate_keys(root, shown_path)
    return root, data


def _reject_duplicate_keys(root: yaml.Node | None, shown_path: str) -> None:
    """safe_load keeps the last of two equal keys silently; a recipe with both is a mistake."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:  # aliases share nodes; recursive ones form cycles
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in lines:
                        raise RecipeError(
                            f"{shown_path}:{key.start_mark.line + 1}: duplicate key '{printable(key.value)}' "
                            f"(first on line {lines[key.value]}); keep one")
                    lines[key.value] = key.start_mark.line + 1
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


class _Locator:
    """Turns a path inside the document into FILE:LINE using the composed node tree."""

    def __init__(self, shown_path: str, root: yaml.Node | None) -> None:
        self.shown_path = shown_path
        self.root = root

    def line(self, path: Path_) -> int:
        """Line of the deepest node of `path` that exists (a mapping entry: its key's line)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for part in path:
            found = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                found = next(((k, v) for k, v in node.value
                              if isinstance(k, yaml.ScalarNode) and k.value == part), None)
                if found is not None:
                    line = found[0].start_mark.line + 1
                    node = found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
                found = (node, node)
            if found is None:
                break
        return line

    def fail(self, path: Path_, message: str) -> Any:
        key = f"key '{key_text(path)}': " if path else ""
        raise RecipeError(f"{self.shown_path}:{self.line(path)}: {key}{message}")

    def settings(self, data: Mapping[Any, Any], base: Path_, per_scan: bool,
                 extra_keys: tuple[str, ...] = ()) -> Layer:
        try:
            parsed = parse_settings(data, base, per_scan, extra_keys)
        except SettingError as exc:
            self.fail(exc.path, exc.message)
        return {key: Sourced(value, f"recipe {self.shown_path}:{self.line(path)}")
                for key, (value, path) in parsed.items()}
