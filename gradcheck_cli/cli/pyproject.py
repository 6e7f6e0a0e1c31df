"""`[tool.gradcheck]` in pyproject.toml: project-wide defaults for every scan.

Discovery follows ruff: starting in the current directory and going up, the first pyproject.toml
that has a `[tool.gradcheck]` table is used (a pyproject.toml without one, e.g. a sub-package's,
does not hide the project's). The table takes the keys of a recipe's `defaults:` and is checked by
the same validator (settings.parse_settings).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

from gradcheck_cli.cli.settings import Layer, SettingError, Sourced, key_text, parse_settings
from gradcheck_cli.errors import UserError

TABLE = "[tool.gradcheck]"


def find_pyproject(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The nearest pyproject.toml (from `start`, default the cwd, upward) with [tool.gradcheck],
    and that table; None when there is none."""
    directory = (start or Path.cwd()).resolve()
    for folder in (directory, *directory.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        table = _read_table(candidate)
        if table is not None:
            return candidate, table
    return None


def pyproject_layer(start: Path | None = None) -> tuple[Layer, Path | None]:
    """The settings of the nearest [tool.gradcheck] (an empty layer when there is none)."""
    found = find_pyproject(start)
    if found is None:
        return {}, None
    path, table = found
    source = f"{_shown_path(path)} {TABLE}"
    try:
        parsed = parse_settings(table, (), per_scan=False)
    except SettingError as exc:
        line = _line_of(path, exc.path)
        raise UserError(f"{_shown_path(path)}:{line}: {TABLE} key '{key_text(exc.path) or '-'}': "
                        f"{exc.message}") from None
    return {key: Sourced(value, source) for key, (value, _) in parsed.items()}, path


def _read_table(path: Path) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {_shown_path(path)}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        at_line = re.search(r"at line (\d+)", str(exc))
        where = f"{_shown_path(path)}:{at_line.group(1)}" if at_line else _shown_path(path)
        raise UserError(f"{where}: invalid TOML: {exc}; gradcheck reads its {TABLE} table") from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays and inline tables
        raise UserError(f"{_shown_path(path)}: nested too deeply to read (arrays or inline tables inside "
                        f"each other thousands of levels deep); gradcheck reads its {TABLE} table") from None
    tool = data.get("tool")
    table = tool.get("gradcheck") if isinstance(tool, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict):
        raise UserError(f"{_shown_path(path)}: tool.gradcheck must be a table ({TABLE}), "
                        f"got {type(table).__name__}")
    return table


def _line_of(path: Path, key_path: tuple[str | int, ...]) -> int:
    """Best-effort line of a key: tomllib keeps no positions, so find `key =` (or the
    `[tool.gradcheck.key]` header) after the [tool.gradcheck] header; else the header's line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next((i for i, line in enumerate(lines) if line.strip().startswith("[tool.gradcheck")), 0)
    names = [p for p in key_path if isinstance(p, str)]
    if not names:
        return header + 1
    pattern = re.compile(rf"^\s*(\[tool\.gradcheck\.{re.escape(names[-1])}\]|{re.escape(names[-1])}\s*=)")
    for i in range(header, len(lines)):
        if pattern.match(lines[i]) or re.search(rf"[{{,]\s*{re.escape(names[-1])}\s*=", lines[i]):
            return i + 1
    return header + 1


def _shown_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
