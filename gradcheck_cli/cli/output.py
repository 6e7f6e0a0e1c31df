"""The output half of the CLI: where a report goes, what the exit code is. Called by cli/app.py only.

Kept apart from cli/app.py (which parses the command lines) so that `scan` and `run` share one path:
- the report in the chosen format goes to stdout (also for ``--output -``), or to ``--output FILE``
  as output_file.py writes it: atomically to a regular file (a reader never sees a truncated
  report, and a failed write leaves the old file as it was), through a symlink, FIFO, device or
  inherited descriptor (/dev/stdout, /dev/fd/N) as it stands;
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import typer

from gradcheck_cli.cli.baseline import baseline_text, parse_baseline
from gradcheck_cli.cli.output_file import is_stdout, write_output
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.gate import run_exit_code
from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.report.render import OutputFormat, render

EXIT_OK, EXIT_FINDINGS = 0, 1


@dataclass(frozen=True)
class OutputOptions:
    """The reporting options shared by `gradcheck scan` and `gradcheck run`."""

    fmt: OutputFormat = OutputFormat.TABLE
    output: Path | None = None
    """--output FILE: the report goes there instead of stdout ('-': stdout)."""
    known: frozenset[str] = frozenset()
    """Fingerprints accepted by --baseline FILE (read before the scans, see load_baseline)."""
    write_baseline: Path | None = None
    """--write-baseline FILE ('-': stdout, when the report goes elsewhere)."""
    exit_zero: bool = False
    quiet: bool = False
    no_color: bool = False
    width: int = 100
    """Columns of the table on stdout (the terminal's); a table written to --output gets 100."""

    def __post_init__(self) -> None:
        report_on_stdout = (self.output is None and self.fmt is not OutputFormat.GITHUB) or is_stdout(self.output)
        if is_stdout(self.write_baseline) and report_on_stdout:
            raise UserError("--write-baseline - and the report would both go to stdout; "
                            "send one of them to a file (--output FILE or --write-baseline FILE)")


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
    to_stdout = options.output is None or is_stdout(options.output)
    color = to_stdout and sys.stdout.isatty() and _colour_allowed(options.no_color)
    width = options.width if to_stdout else 100
    text = render(results, fmt, combined=combined, width=width, color=color, known=options.known)
    if options.output is not None and not to_stdout:
        write_output(options.output, text)
        if not options.quiet:
            typer.echo(f"gradcheck: wrote the {fmt.value} report to {options.output}", err=True)
    elif fmt is OutputFormat.GITHUB and options.output is None:
        sys.stderr.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if fmt is OutputFormat.TABLE and os.environ.get("GITHUB_ACTIONS") == "true":
        _github_actions_extras(results, combined, options.known)
    if is_stdout(options.write_baseline):
        sys.stdout.write(baseline_text(results))
    elif options.write_baseline is not None:
        write_output(options.write_baseline, baseline_text(results))
        if not options.quiet:
            typer.echo(f"gradcheck: wrote the baseline to {options.write_baseline}", err=True)
    code = run_exit_code(results, options.known)
    return EXIT_OK if options.exit_zero and code == EXIT_FINDINGS else code


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
