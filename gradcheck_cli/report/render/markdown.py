"""The Markdown renderer: GitHub-flavoured Markdown for pull-request comments and the Actions
step summary ($GITHUB_STEP_SUMMARY).

Per scan: a heading with the verdict and the gate's outcome, the probe configuration, the
findings as a table (with the gate column, so a reviewer sees what blocks the merge), the
recommendations with their snippets in fenced code blocks, and the per-layer table folded in a
``<details>`` block (a 50-layer table would bury the findings). Several scans start with a
summary table. Table cells escape ``|`` and never break a row with a newline. Control characters
(an ANSI colour code in an error message) are written as visible escapes (common.visible).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from gradcheck_cli.report.gate import fingerprint
from gradcheck_cli.report.records import Report, ScanResult, Status
from gradcheck_cli.report.render.common import (
    format_number,
    gate_fingerprints,
    is_watch,
    outcome,
    series_summary,
    summarised_series,
    visible,
    watch_summary,
    where,
)
from gradcheck_cli.report.render.verified import (
    DID_NOT_HELP,
    NOT_VERIFIED,
    combined_text,
    group_recommendations,
    has_verification,
    probe_text,
    verification_text,
)

OUTCOME_MARKS = {"pass": "✅ pass", "fail": "❌ fail", "error": "⚠️ error"}


def render_markdown(results: Sequence[ScanResult], known: frozenset[str] = frozenset()) -> str:
    """The scans as one Markdown document ending with a newline."""
    blocks: list[str] = []
    if len(results) > 1:
        blocks.append(_run_summary(results, known))
    for result in results:
        blocks.append(_scan_section(result, known, level=3 if len(results) > 1 else 2))
    return visible("\n\n".join(block.strip("\n") for block in blocks) + "\n")


def cell(text: object) -> str:
    """Text safe inside a table cell: ``|`` escaped, line breaks as spaces."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(text)).replace("|", "\\|")


def code_span(text: str) -> str:
    """Inline code that survives backticks inside ``text`` (CommonMark: a longer fence)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def code_block(code: str, language: str = "python") -> str:
    longest = max((len(run) for run in re.findall(r"`{3,}", code)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{code.strip(chr(10))}\n{fence}"


def _run_summary(results: Sequence[ScanResult], known: frozenset[str]) -> str:
    outcomes = [outcome(r, known) for r in results]
    counts = ", ".join(f"{outcomes.count(word)} {past}" for word, past in
                       (("pass", "passed"), ("fail", "failed"), ("error", "errored")))
    lines = [f"## gradcheck: {len(results)} scans — {counts}", "",
             "| scan | target | verdict | gate |", "| --- | --- | --- | --- |"]
    for result, word in zip(results, outcomes):
        verdict = result.report.verdict.value if result.report is not None else "—"
        lines.append(f"| {cell(result.name)} | {cell(code_span(result.target))} | {verdict} | "
                     f"{OUTCOME_MARKS[word]} |")
    return "\n".join(lines)


def _scan_section(result: ScanResult, known: frozenset[str], level: int) -> str:
    hashes = "#" * level
    word = outcome(result, known)
    report = result.report
    if report is None:
        return (f"{hashes} gradcheck: {result.name} — {OUTCOME_MARKS[word]}\n\n"
                f"The scan of {code_span(result.target)} did not run to the end:\n\n"
                f"> {cell(result.error or 'the scan failed')}")
    verdict = report.verdict.value if report.verdict is Status.HEALTHY else report.verdict.value.upper()
    title = result.name if level == 3 else report.target
    lines = [f"{hashes} gradcheck: {code_span(title)} — verdict **{verdict}** — {OUTCOME_MARKS[word]}",
             "", _probe_line(report)]
    series = summarised_series(report)  # a watch's; not a scan's own --steps series
    if series is not None:
        lines += ["", visible(series_summary(series))]
    failing = gate_fingerprints(result, known)
    if report.findings:
        lines += ["", f"**Findings ({len(report.findings)})**", "",
                  "| severity | kind | where | message | gate |", "| --- | --- | --- | --- | --- |"]
        for finding in report.findings:
            mark = fingerprint(finding)
            gate = "fails" if mark in failing else ("baselined" if mark in known else "—")
            lines.append(f"| {finding.severity.value} | {finding.kind.value} | {cell(where(finding))} | "
                         f"{cell(finding.message)} | {gate} |")
    else:
        lines += ["", "No findings: every layer's gradient is in the healthy range."]
    if report.recommendations and has_verification(report):
        lines += _verified_recommendations(report)
    elif report.recommendations:
        lines += ["", f"**Recommendations ({len(report.recommendations)}, most effective first)**", ""]
        for rank, rec in enumerate(report.recommendations, start=1):
            layers = ", ".join(code_span(name) for name in rec.layers)
            lines.append(f"{rank}. **{rec.id.value}**: {rec.title}" + (f" — layers: {layers}" if layers else ""))
            lines.append(f"   <br>why: {rec.why}")
            if rec.code.strip():
                lines += ["", _indent(code_block(rec.code), 3)]
            lines.append("")
    else:
        lines.append("")
    lines.append(_layer_details(report))
    return "\n".join(lines)


def _verified_recommendations(report: Report) -> list[str]:
    """With --verify: the fixes that helped, then apart (never as a fix) those that could not be
    verified, those measured not to help (no snippet), and the verified set applied together."""
    groups = group_recommendations(report.recommendations)
    lines = ["", f"**Recommendations ({len(report.recommendations)}, {probe_text(report)})**", ""]
    if not groups.fixes:
        lines += ["None of them helped when measured.", ""]
    for heading, entries, show_code in ((None, groups.fixes, True), (NOT_VERIFIED, groups.not_verified, True),
                                        (DID_NOT_HELP, groups.did_not_help, False)):
        if heading is not None and entries:
            lines += [f"**{heading.capitalize()} ({len(entries)})**", ""]
        for rank, rec in entries:
            layers = ", ".join(code_span(name) for name in rec.layers)
            lines.append(f"{rank}. **{rec.id.value}**: {rec.title}" + (f" — layers: {layers}" if layers else ""))
            lines.append(f"   <br>why: {rec.why}")
            lines.append(f"   <br>{cell(verification_text(rec.verification))}")
            if show_code and rec.code.strip():
                lines += ["", _indent(code_block(rec.code), 3)]
            lines.append("")
    if report.verification is not None:
        combined = combined_text(report.verification)
        lines += [f"**{cell(combined[:1].upper() + combined[1:])}**", ""]
    return lines


def _probe_line(report: Report) -> str:
    config = report.config
    values = report.loss.values
    mean = format_number(sum(values) / len(values)) if values else "—"
    if values and not all(math.isfinite(v) for v in values):
        mean += f" ({sum(1 for v in values if not math.isfinite(v))} of {len(values)} non-finite)"
    probe = (f"probe: {config.get('batches', '?')} batches × {config.get('batch_size', '?')}, "
             f"seed {config.get('seed', '?')}, {config.get('device', '?')}")
    if config.get("steps"):
        probe += f", {config['steps']} steps of {config.get('optimizer', '?')}"
    fail_on = ", ".join(config.get("fail_on", ())) or "none"
    if is_watch(report):  # the loss over the steps is in the series line that follows
        loss = "" if report.series is not None else f" · loss: {report.loss.kind}, mean {mean}"
        return f"{watch_summary(config)}{loss} · fails on: {fail_on}"
    return f"{probe} · loss: {report.loss.kind}, mean {mean} · fails on: {fail_on}"


def _layer_details(report: Report) -> str:
    lines = [f"<details><summary>Layers ({len(report.layers)})</summary>", "",
             "| # | layer | type | status | grad_norm | grad/weight | nonfinite |",
             "| --: | --- | --- | --- | --: | --: | --: |"]
    for layer in report.layers:
        status = layer.status.value if layer.status in (Status.HEALTHY, Status.FROZEN, Status.UNUSED) \
            else f"**{layer.status.value}**"
        lines.append(f"| {layer.index} | {cell(code_span(layer.name))} | {cell(layer.type)} | {status} | "
                     f"{format_number(layer.grad_norm)} | {format_number(layer.grad_to_weight)} | "
                     f"{layer.nonfinite_grads} |")
    lines += ["", "</details>"]
    return "\n".join(lines)


def _indent(text: str, spaces: int) -> str:
    return "\n".join((" " * spaces + line) if line else line for line in text.splitlines())
