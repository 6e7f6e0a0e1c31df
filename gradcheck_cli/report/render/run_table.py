"""The table of a recipe run: the table of each scan under a rule naming it, an errored scan as its
error line, then one overall line counting passed, failed and errored scans."""

from __future__ import annotations

import io
from collections.abc import Sequence

from rich.text import Text

from gradcheck_cli.report.gate import scan_exit_code
from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.report.render.table import make_console, print_report, strip_trailing_blanks


def render_results_table(results: Sequence[ScanResult], *, width: int, color: bool,
                         known: frozenset[str] = frozenset()) -> str:
    """Several scans (a recipe run): a titled table per scan, an errored scan as its error
    line, then one overall line counting passed, failed and errored scans."""
    buffer = io.StringIO()
    console = make_console(buffer, width, color)
    codes = []
    for number, result in enumerate(results, start=1):
        code = scan_exit_code(result, known)
        codes.append(code)
        if number > 1:
            console.print()
        title = Text(f"scan {number}/{len(results)}: ", style="bold")
        title.append(result.name, style="bold")
        if result.target != result.name:
            title.append(f" ({result.target})")
        console.rule(title, align="left", style="dim")
        if result.report is None:
            line = Text("error: ", style="bold red")
            line.append(result.error or "the scan failed")
            console.print(line)
        else:
            print_report(console, result.report, width, known)
    console.print()
    console.print(_overall_line(codes))
    return strip_trailing_blanks(buffer.getvalue())


def _overall_line(codes: Sequence[int]) -> Text:
    plural = "scan" if len(codes) == 1 else "scans"
    line = Text(f"overall: {len(codes)} {plural}: ", style="bold")
    parts = [(codes.count(0), "passed", "green"), (codes.count(1), "failed", "red"),
             (codes.count(2), "errored", "bold red")]
    line.append_text(Text(", ").join(Text(f"{n} {word}", style=style if n else "")
                                     for n, word, style in parts))
    return line
