"""The HTML renderer: one self-contained page (inline CSS and SVG, no script, nothing fetched from
the network) that opens offline and in a CI artifact viewer.

Per scan, top to bottom: the verdict (a word, not only a colour), what was measured (target, tool
version, probe or watch configuration, loss), the charts (svg.py, svg_series.py: gradient flow
along depth, each recurrent layer's gradient through time, loss and per-layer norms over steps),
the findings (with the gate's outcome: fails / baselined), the recommendations with their
before -> after verification, and the layer table. A recipe run (several scans) is one page: a
summary list with links at the top, then a section per scan; a scan that failed shows its error.

Every string from the report is HTML-escaped (and control characters made visible, as the other
formats do); the bytes depend only on the results, so the same report gives the same page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from gradcheck_cli.report.charts import TimeProfile, charts_of
from gradcheck_cli.report.gate import fingerprint
from gradcheck_cli.report.records import LayerReport, Recommendation, Report, ScanResult, Status
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
from gradcheck_cli.report.render.svg import flow_svg
from gradcheck_cli.report.render.svg_marks import STATUS_MARKS
from gradcheck_cli.report.render.svg_series import step_svg, through_time_svg
from gradcheck_cli.report.render.verified import (
    DID_NOT_HELP,
    NOT_VERIFIED,
    combined_text,
    group_recommendations,
    has_verification,
    probe_text,
)
from gradcheck_cli.report.verification import Verification

FOLD_HEALTHY_PAST = 200
"""Past this many layers the table lists the flagged layers, with every layer in a folded <details>."""

OUTCOME_WORDS = {"pass": "pass", "fail": "FAIL: a finding fails the gate", "error": "ERROR: the scan did not run"}

# Long names without a break point (a 300-character layer name) wrap anywhere in code, text and the
# name cells of the findings and before/after tables, so no table runs off the page; other cells
# wrap only between words (a type like "Embedding" is not split) and numbers never.
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1240px;
padding:1rem 1.5rem;color:#111;background:#fff;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.35rem;border-bottom:2px solid #333;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.1rem;margin-top:1.5rem}
.verdict{display:inline-block;font-size:1.3rem;font-weight:bold;padding:.3rem .8rem;border:3px solid #000;
border-radius:4px}
.verdict-healthy{background:#d9f0d3}.verdict-vanishing{background:#c6dbef;border-style:dashed}
.verdict-exploding{background:#fdae6b;border-style:double;border-width:5px}
.verdict-nonfinite{background:#3f007d;color:#fff;border-style:dotted}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem}dl.meta dt{font-weight:bold}
dl.meta dd{margin:0}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #bbb;padding:.15rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#eee}
code,dd,p,li,figcaption,h2,table.findings td:nth-child(n+3),table.changes td:nth-child(2){overflow-wrap:anywhere}
td,th{overflow-wrap:break-word}td.num,thead th{white-space:nowrap}
.status{font-weight:bold;white-space:nowrap}
.status-vanishing{background:#c6dbef}.status-exploding{background:#fdae6b}
.status-nonfinite{background:#3f007d;color:#fff}.status-frozen,.status-unused{color:#555;font-style:italic}
.gate-fails{font-weight:bold}.gate-baselined{font-style:italic;color:#555}
figure{margin:1rem 0;overflow-x:auto}svg.chart{max-width:100%;height:auto;border:1px solid #ddd}
pre{background:#f4f4f4;border:1px solid #ccc;padding:.5rem;overflow-x:auto}
.error{border-left:4px solid #000;padding:.3rem .8rem;background:#fee}
ol.recs>li{margin-bottom:1rem}
""".strip()


def render_html(results: Sequence[ScanResult], known: frozenset[str] = frozenset()) -> str:
    """The scans as one HTML5 document ending with a newline."""
    several = len(results) > 1
    title = "gradcheck: " + (f"{len(results)} scans" if several else _scan_title(results[0]))
    body = ['<h1>gradcheck report</h1>']
    if several:
        body.append(_run_summary(results, known))
    for number, result in enumerate(results, start=1):
        body.append(_scan_section(result, known, f"scan-{number}"))
    page = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>", "<main>",
            *body, "</main>", "</body>", "</html>"]
    return "\n".join(page) + "\n"


def esc(text: object) -> str:
    """Report text safe as HTML element content or a quoted attribute value."""
    return escape(visible(str(text)), quote=True)


def _scan_title(result: ScanResult) -> str:
    if result.report is None:
        return f"{result.target}: error"
    return f"{result.report.target}: {result.report.verdict.value}"


def _run_summary(results: Sequence[ScanResult], known: frozenset[str]) -> str:
    outcomes = [outcome(r, known) for r in results]
    counts = ", ".join(f"{outcomes.count(word)} {past}" for word, past in
                       (("pass", "passed"), ("fail", "failed"), ("error", "errored")))
    items = []
    for number, (result, word) in enumerate(zip(results, outcomes, strict=True), start=1):
        verdict = result.report.verdict.value if result.report is not None else "did not run"
        items.append(f'<li><a href="#scan-{number}">{esc(result.name)}</a> (<code>{esc(result.target)}</code>): '
                     f'verdict <strong>{esc(verdict)}</strong>, gate <strong>{esc(word)}</strong></li>')
    return (f'<section aria-labelledby="summary"><h2 id="summary">{len(results)} scans: {counts}</h2>\n'
            f'<ul class="summary">\n' + "\n".join(items) + "\n</ul></section>")


def _scan_section(result: ScanResult, known: frozenset[str], ident: str) -> str:
    report = result.report
    word = outcome(result, known)
    if report is None:
        return (f'<section id="{ident}" aria-labelledby="{ident}-h"><h2 id="{ident}-h">{esc(result.name)}: '
                f'error</h2>\n<p>The scan of <code>{esc(result.target)}</code> did not run to the end '
                f'(gate: {esc(OUTCOME_WORDS[word])}):</p>\n'
                f'<p class="error">{esc(result.error or "the scan failed")}</p></section>')
    parts = [f'<section id="{ident}" aria-labelledby="{ident}-h">',
             f'<h2 id="{ident}-h">{esc(result.name if result.name != report.target else report.target)}</h2>',
             _header(report, word), _charts(report, ident), _findings(result, known)]
    parts += _recommendations(report)
    parts.append(_layer_tables(report))
    parts.append("</section>")
    return "\n".join(parts)


def _header(report: Report, word: str) -> str:
    verdict = report.verdict.value
    mark = STATUS_MARKS.get(report.verdict, "OK")
    rows = [("target", f"<code>{esc(report.target)}</code>"),
            ("tool", f"gradcheck {esc(report.tool_version)}"),
            ("measured", esc(_measured(report))),
            ("loss", esc(_loss_text(report))),
            ("gate", esc(OUTCOME_WORDS[word]) + f" (fails on: {esc(_fail_on(report))})")]
    series = summarised_series(report)  # a watch's ("watch: N sampled steps"); a scan's steps are charted
    if series is not None:
        rows.append(("series", esc(series_summary(series))))
    items = "\n".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return (f'<p>Verdict: <span class="verdict verdict-{verdict}">[{esc(mark)}] {esc(verdict.upper())}</span></p>\n'
            f'<dl class="meta">\n{items}\n</dl>')


def _fail_on(report: Report) -> str:
    return ", ".join(str(kind) for kind in report.config.get("fail_on", ())) or "none"


def _measured(report: Report) -> str:
    config = report.config
    if is_watch(report):
        return watch_summary(config)
    text = (f"{config.get('batches', '?')} probe batches of {config.get('batch_size', '?')}, "
            f"seed {config.get('seed', '?')}, {config.get('device', '?')}")
    if config.get("steps"):
        text += f", {config['steps']} steps of {config.get('optimizer', '?')} (lr {config.get('lr', '?')})"
    return text


def _loss_text(report: Report) -> str:
    values = report.loss.values
    if not values:
        return report.loss.kind
    finite = [v for v in values if math.isfinite(v)]
    text = f"{report.loss.kind}, mean {format_number(sum(finite) / len(finite)) if finite else '—'}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} of {len(values)} non-finite)"
    return text


def _charts(report: Report, ident: str) -> str:
    charts = charts_of(report)
    figures = []
    if charts.flow is not None:
        figures.append(_figure(flow_svg(charts.flow, f"{ident}-flow"),
                               "Gradient flow: bars are log10 values per layer, V/E/NaN mark vanishing, "
                               "exploding and non-finite layers; dashed lines are the thresholds."))
    for number, profile in enumerate(charts.through_time, start=1):
        figures.append(_figure(through_time_svg(profile, f"{ident}-time-{number}"),
                               f"Gradient reaching each time step of {esc(profile.layer)}; "
                               + esc(_horizon_caption(profile))))
    if charts.loss is not None:
        figures.append(_figure(step_svg(charts.loss, "loss", f"{ident}-loss"), esc(charts.loss.title)))
    if charts.step_norms is not None:
        figures.append(_figure(step_svg(charts.step_norms, "step-norms", f"{ident}-norms"),
                               esc(charts.step_norms.title)))
    if not figures:
        return "<h3>Charts</h3>\n<p>No chart: no layer with parameters was measured.</p>"
    return "<h3>Charts</h3>\n" + "\n".join(figures)


def _horizon_caption(profile: TimeProfile) -> str:
    """What the through-time chart draws for the horizon: its dashed line only when there is one
    (svg_series.through_time_svg draws it for a horizon and more than one point)."""
    if profile.horizon is None:
        return (f"no horizon line: the gradient stays above the horizon fraction over all {profile.steps} "
                "steps.")
    if len(profile.values) < 2:
        return f"effective horizon: {profile.horizon} steps back from the near end (one point, no line)."
    return f"the dashed line is the effective horizon, {profile.horizon} steps back from the near end."


def _figure(svg: str, caption: str) -> str:
    return f"<figure>\n{svg}\n<figcaption>{caption}</figcaption>\n</figure>"


def _findings(result: ScanResult, known: frozenset[str]) -> str:
    report = result.report
    assert report is not None
    if not report.findings:
        return "<h3>Findings</h3>\n<p>No findings: every layer's gradient is in the healthy range.</p>"
    failing = gate_fingerprints(result, known)
    rows = []
    for finding in report.findings:
        mark = fingerprint(finding)
        gate = "fails" if mark in failing else ("baselined" if mark in known else "—")
        rows.append(f'<tr><td>{esc(finding.severity.value)}</td><td>{esc(finding.kind.value)}</td>'
                    f'<td>{esc(where(finding))}</td><td>{esc(finding.message)}</td>'
                    f'<td class="gate-{"fails" if gate == "fails" else "baselined" if gate != "—" else "none"}">'
                    f'{gate}</td></tr>')
    head = "".join(f'<th scope="col">{name}</th>' for name in ("severity", "kind", "where", "message", "gate"))
    return (f"<h3>Findings ({len(report.findings)})</h3>\n<table class=\"findings\">\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _recommendations(report: Report) -> list[str]:
    if not report.recommendations:
        return []
    if not has_verification(report):
        entries = tuple(enumerate(report.recommendations, start=1))
        return [f"<h3>Recommendations ({len(entries)}, most effective first)</h3>", _rec_list(entries, True)]
    groups = group_recommendations(report.recommendations)
    parts = [f"<h3>Recommendations ({len(report.recommendations)}, {esc(probe_text(report))})</h3>"]
    parts.append(_rec_list(groups.fixes, True) if groups.fixes else "<p>None of them helped when measured.</p>")
    for heading, entries, show_code in ((NOT_VERIFIED, groups.not_verified, True),
                                        (DID_NOT_HELP, groups.did_not_help, False)):
        if entries:
            parts += [f"<h4>{esc(heading.capitalize())} ({len(entries)})</h4>", _rec_list(entries, show_code)]
    if report.verification is not None:
        combined = combined_text(report.verification)
        parts.append(f'<p class="combined"><strong>{esc(combined[:1].upper() + combined[1:])}</strong></p>')
    return parts


def _rec_list(entries: Sequence[tuple[int, Recommendation]], show_code: bool) -> str:
    items = []
    for rank, rec in entries:
        layers = ", ".join(f"<code>{esc(name)}</code>" for name in rec.layers)
        item = [f'<li value="{rank}"><p><strong>{esc(rec.id.value)}</strong>: {esc(rec.title)}'
                + (f" (layers: {layers})" if layers else "") + "</p>",
                f"<p>why: {esc(rec.why)}</p>"]
        if rec.verification is not None:
            item.append(_verification(rec.verification))
        if show_code and rec.code.strip():
            item.append(f'<pre><code>{esc(rec.code.strip(chr(10)))}</code></pre>')
        items.append("\n".join(item) + "</li>")
    return '<ol class="recs">\n' + "\n".join(items) + "\n</ol>"


def _verification(verification: Verification) -> str:
    after = verification.verdict_after or "not measured"
    text = (f'<p class="verification">verification: <strong>{esc(verification.status.value)}</strong>: '
            f'{esc(verification.summary)} (verdict {esc(verification.verdict_before)} -&gt; {esc(after)})</p>')
    if not verification.changes:
        return text
    head = "".join(f'<th scope="col">{name}</th>' for name in ("metric", "layer", "before", "after"))
    rows = "\n".join(f"<tr><td>{esc(c.metric)}</td><td>{esc(c.layer or '(whole model)')}</td>"
                     f'<td class="num">{esc(_value(c.before))}</td><td class="num">{esc(_value(c.after))}</td></tr>'
                     for c in verification.changes)
    return f'{text}\n<table class="changes">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>'


def _value(value: float | int | str | None) -> str:
    return value if isinstance(value, str) else format_number(value)


def _layer_tables(report: Report) -> str:
    layers = report.layers
    if len(layers) <= FOLD_HEALTHY_PAST:
        return f"<h3>Layers ({len(layers)})</h3>\n" + _layer_table(report, layers)
    flagged = [layer for layer in layers if layer.status is not Status.HEALTHY]
    return (f"<h3>Layers ({len(layers)}; {len(flagged)} not healthy)</h3>\n"
            + (_layer_table(report, flagged) if flagged else "<p>Every layer is healthy.</p>")
            + f"\n<details><summary>All {len(layers)} layers</summary>\n{_layer_table(report, layers)}\n</details>")


def _layer_table(report: Report, layers: Sequence[LayerReport]) -> str:
    updates = any(layer.update_to_weight is not None for layer in report.layers)
    names = ["#", "layer", "type", "params", "status", "grad norm", "grad/weight"]
    names += ["update/weight"] if updates else []
    names.append("non-finite grads")
    head = "".join(f'<th scope="col">{name}</th>' for name in names)
    rows = []
    for layer in layers:
        mark = STATUS_MARKS.get(layer.status)
        status = f"[{mark}] {layer.status.value}" if mark else layer.status.value
        cells = [f'<td class="num">{layer.index}</td>', f'<th scope="row"><code>{esc(layer.name)}</code></th>',
                 f"<td>{esc(layer.type)}</td>", f'<td class="num">{layer.params}</td>',
                 f'<td class="status status-{layer.status.value}">{esc(status)}</td>',
                 f'<td class="num">{format_number(layer.grad_norm)}</td>',
                 f'<td class="num">{format_number(layer.grad_to_weight)}</td>']
        if updates:
            cells.append(f'<td class="num">{format_number(layer.update_to_weight)}</td>')
        cells.append(f'<td class="num">{layer.nonfinite_grads}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="layers">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table>")
