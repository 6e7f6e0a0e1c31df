"""The output half of the CLI: where a report goes, what the exit code is. Called by cli.py only.

Kept apart from cli.py (which parses the command lines) so that `scan` and `run` share one path:
- the report in the chosen format goes to stdout, or atomically to ``--output FILE`` (a reader
  never sees a truncated report, and a failed write leaves the old file as it was);
- ``github`` annotations go to stderr, as workflow commands are read from either stream and the
  issue asks stdout to stay free for machine output;
- under GitHub Actions (GITHUB_ACTIONS=true) a table run also writes the annotations on stderr
  and appends the Markdown summary to $GITHUB_STEP_SUMMARY;
- the exit code is the worst scan's (0 clean, 1 findings failing the gate after the baseline,
  2 a scan that could not run); ``--exit-zero`` turns 1 into 0 and never hides a 2.
Human messages (what was written where) go to stderr, unless ``--quiet``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import typer

from .baseline import baseline_text, parse_baseline
from .errors import UserError
from .gate import run_exit_code
from .render import OutputFormat, render
from .report import ScanResult

EXIT_OK, EXIT_FINDINGS = 0, 1


@dataclass(frozen=True)
class OutputOptions:
    """The reporting options shared by `gradcheck scan` and `gradcheck run`."""

    fmt: OutputFormat = OutputFormat.TABLE
    output: Path | None = None
    """--output FILE: the report goes there instead of stdout."""
    known: frozenset[str] = frozenset()
    """Fingerprints accepted by --baseline FILE (read before the scans, see load_baseline)."""
    write_baseline: Path | None = None
    exit_zero: bool = False
    quiet: bool = False
    no_color: bool = False
    width: int = 100
    """Columns of the table on stdout (the terminal's); a table written to --output gets 100."""


def parse_format(value: str) -> OutputFormat:
    try:
        return OutputFormat(value.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in OutputFormat)
        raise UserError(f"invalid --format '{value}'; choose one of: {choices}") from None


def load_baseline(path: Path | None) -> frozenset[str]:
    """The fingerprints of --baseline FILE; read before scanning, so a bad file fails fast."""
    if path is None:
        return frozenset()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"baseline {path} does not exist; create it with --write-baseline {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"baseline {path} cannot be read: {exc}") from None
    return parse_baseline(text, str(path))


def emit(results: Sequence[ScanResult], options: OutputOptions, *, combined: bool = False) -> int:
    """Write the results where the options say and return the exit code."""
    fmt = options.fmt
    to_stdout = options.output is None
    color = to_stdout and sys.stdout.isatty() and _colour_allowed(options.no_color)
    width = options.width if to_stdout else 100
    text = render(results, fmt, combined=combined, width=width, color=color, known=options.known)
    if options.output is not None:
        write_atomic(options.output, text)
        if not options.quiet:
            typer.echo(f"gradcheck: wrote the {fmt.value} report to {options.output}", err=True)
    elif fmt is OutputFormat.GITHUB:
        sys.stderr.write(text)
    else:
        sys.stdout.write(text)
    if fmt is OutputFormat.TABLE and os.environ.get("GITHUB_ACTIONS") == "true":
        _github_actions_extras(results, combined, options.known)
    if options.write_baseline is not None:
        write_atomic(options.write_baseline, baseline_text(results))
        if not options.quiet:
            typer.echo(f"gradcheck: wrote the baseline to {options.write_baseline}", err=True)
    code = run_exit_code(results, options.known)
    return EXIT_OK if options.exit_zero and code == EXIT_FINDINGS else code


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: a temporary file in the same folder (so the
    rename stays on one file system), flushed and fsynced, then os.replace. On any failure the
    temporary file is removed and the old file is left as it was."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, prefix=f".{path.name}.",
                                             suffix=".tmp", delete=False)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; check that the folder "
                        "exists and is writable") from None
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as exc:
        Path(handle.name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _github_actions_extras(results: Sequence[ScanResult], combined: bool, known: frozenset[str]) -> None:
    """Annotations on stderr and the Markdown summary appended to $GITHUB_STEP_SUMMARY; a
    summary file that cannot be written costs one warning line, never the run."""
    sys.stderr.write(render(results, OutputFormat.GITHUB, combined=combined, known=known))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return
    try:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(render(results, OutputFormat.MARKDOWN, combined=combined, known=known))
    except OSError as exc:
        typer.echo(f"gradcheck: warning: cannot append the summary to GITHUB_STEP_SUMMARY={summary}: "
                   f"{exc.strerror or exc}", err=True)


def _colour_allowed(no_color: bool) -> bool:
    return not no_color and not os.environ.get("NO_COLOR")
