"""`gradcheck explain ID`, `gradcheck list checks|fixes` and the catalogue they read.

The catalogue must cover every stable id with every field, quote the classifier's real thresholds,
and agree with fixes.recommend on which findings justify which recommendation.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from stats_factory import layer_stats, with_values
from typer.testing import CliRunner

from gradcheck_cli.analyse.checks import CHECKS
from gradcheck_cli.analyse.fixes import recommend
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds, quote
from gradcheck_cli.analyse.timeline import TIMELINE_KINDS
from gradcheck_cli.cli import knowledge as catalog
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.knowledge import FINDINGS, FIXES, NOT_YET_MEASURED, NOT_YET_RECOMMENDED, Entry
from gradcheck_cli.measure.records import LOG2_HIGH, LOG2_LOW, Headroom
from gradcheck_cli.report.evidence import (
    Bf16StaleUpdateEvidence,
    DeadReluEvidence,
    DivergenceEvidence,
    Fp16OverflowEvidence,
    Fp16UnderflowEvidence,
    InitScaleEvidence,
    LayerNumbers,
    NonfiniteEvidence,
    OriginFacts,
    SaturationEvidence,
    StackRun,
    StatusEvidence,
)
from gradcheck_cli.report.records import Finding, FindingKind, Number, RecommendationId, Severity
from gradcheck_cli.report.render.explain import SECTIONS, render_explain

runner = CliRunner()
ALL_IDS = [k.value for k in FindingKind] + [r.value for r in RecommendationId]
TEXT_FIELDS = ("title", "summary", "mechanism", "measured", "thresholds", "fix")


# --------------------------------------------------------------------------- the catalogue

def test_every_stable_id_has_exactly_one_entry() -> None:
    assert set(FINDINGS) == set(FindingKind)
    assert set(FIXES) == set(RecommendationId)
    for kind, entry in FINDINGS.items():
        assert entry.id == kind.value
    for fix_id, fix in FIXES.items():
        assert fix.id == fix_id.value
    assert sorted(catalog.all_ids()) == sorted(ALL_IDS)


@pytest.mark.parametrize("entry_id", ALL_IDS)
def test_every_field_is_filled(entry_id: str) -> None:
    entry = catalog.lookup(entry_id)
    assert entry is not None
    for name in TEXT_FIELDS:
        value = getattr(entry, name)
        assert value.strip(), f"{entry_id}.{name} is empty"
        assert "TODO" not in value
    assert entry.references and all(ref.strip() for ref in entry.references)
    # Every entry field is rendered: a new Entry field would need a place in the output.
    assert {f.name for f in fields(Entry)} == {"id", "references", *TEXT_FIELDS}


def test_every_classifier_threshold_is_quoted_with_its_value() -> None:
    """A threshold added to classify.Thresholds must be documented in some finding's text."""
    text = " ".join(e.thresholds for e in FINDINGS.values())
    for f in fields(Thresholds):
        value = getattr(Thresholds(), f.name)
        assert quote(value) in text, f"Thresholds.{f.name} = {value} is not in the catalogue"


def test_thresholds_follow_the_classifier_not_a_copy() -> None:
    t = Thresholds()
    vanishing = FINDINGS[FindingKind.VANISHING].thresholds
    exploding = FINDINGS[FindingKind.EXPLODING].thresholds
    assert f"below {quote(t.vanish_grad_to_weight)}" in vanishing
    assert f"above {quote(t.explode_grad_to_weight)}" in exploding
    assert f"at least {t.min_stack} identical" in exploding


@pytest.mark.parametrize(("value", "text"), [(1e-3, "1e-3"), (1e-7, "1e-7"), (1e3, "1e3"),
                                              (70.0, "70"), (0.5, "0.5"), (4, "4")])
def test_numbers_are_written_as_the_papers_write_them(value: float, text: str) -> None:
    assert quote(value) == text


def test_not_yet_measured_text_goes_stale_loudly() -> None:
    """An entry that says 'not yet measured' must lose that sentence when a check (or the training
    watch's timeline) lands (the other direction is rendered from CHECKS and TIMELINE_KINDS by
    explain and list, see below)."""
    for kind, entry in FINDINGS.items():
        if NOT_YET_MEASURED in entry.measured:
            assert kind not in CHECKS, f"{kind.value} has a check now: update its catalogue entry"
            assert kind not in TIMELINE_KINDS, f"the watch finds {kind.value} now: update its page"


def test_lookup_accepts_case_and_underscores() -> None:
    assert catalog.lookup("Dead_ReLU") is FINDINGS[FindingKind.DEAD_RELU]
    assert catalog.lookup(" he-init ") is FIXES[RecommendationId.HE_INIT]
    assert catalog.lookup("nope") is None


def test_every_recommendation_is_justified_by_some_finding_kind() -> None:
    for rid in RecommendationId:
        assert catalog.justifying_findings(rid), rid
    for kind in FindingKind:
        assert catalog.related_fixes(kind), kind


# --------------------------------------------------------------------------- agreement with fixes.py

def _layer(name: str, *, gtw: float = 0.5, function: str = "ReLU", weight_std: float = 0.177,
           type_name: str = "Linear", saturated: float | None = None,
           steps: tuple[float, ...] = ()) -> LayerStats:
    activation: dict[str, object] = {"function": function} if function else {}
    if saturated is not None:
        activation["saturated_fraction"] = saturated
    return layer_stats(
        name=name, type_name=type_name, index=0, params=4096, role="dense", fan_in=64, fan_out=64,
        weight_std=weight_std, trainable=True, received=True, grad_norm=gtw * 8.0, weight_norm=8.0,
        grad_to_weight=gtw, grad_rms=gtw / 8, nonfinite_grads=0, output_rms=1.0,
        output_grad_rms=1e-3, output_nonfinite=False, activation=activation, step_grad_rms=steps)


HE = math.sqrt(2 / 64)
XAVIER = math.sqrt(2 / 128)
RUN = StackRun(stack_signal="gradient", stack_trend="decay", stack_gain_per_layer=0.3,
               stack_total=0.027, stack_layers=4, stack_first="l0", stack_last="l3",
               stack_normalized=False, stack_residual=False, stack_plain=True)
NUMBERS = LayerNumbers(grad_norm=8e-9, weight_norm=8.0, grad_to_weight=1e-9, grad_rms=1e-10)
STACK = StatusEvidence(NUMBERS, stack=RUN)
INIT = InitScaleEvidence(weight_std=0.01, target_std=HE, scheme="he", default_std=0.072, band_low=0.036,
                         band_high=0.35, std_ratio=0.06, fan_in=64, fan_out=64, follower="ReLU",
                         direction="too small")
OK = _layer("head", gtw=0.5, weight_std=HE)
Scenario = tuple[FindingKind, list[LayerStats], Mapping[str, Number]]


def _scenarios() -> list[Scenario]:
    """Synthetic findings that, together, make fixes.recommend emit every recommendation the
    catalogue links to each finding kind. The evidence keys are the checks' own."""
    def stack(prefix: str = "l", **kw: object) -> list[LayerStats]:
        return [_layer(f"{prefix}{i}", **kw) for i in range(4)]  # type: ignore[arg-type]

    rnn = [_layer("rnn", gtw=1e-9, function="", weight_std=0.1, type_name="RNN",
                  steps=(1e-9, 1e-4, 1e-2))]
    rnn_up = [_layer("rnn", gtw=0.5, function="", weight_std=1.0, type_name="RNN",
                     steps=(1e2, 1.0, 1e-1))]
    affected = ("l0", "l1", "l2", "l3", "t0", "t1", "t2", "t3")
    overflow = NonfiniteEvidence(0, 0, 0, affected, len(affected), OriginFacts(
        "l0", "Linear", "linear", "forward", "overflow", None, 1e20, "inf"))
    unsafe = NonfiniteEvidence(0, 0, 0, (), 0, OriginFacts("l0", "Linear", "log", "forward", "unsafe-op",
                                                           None, 3.0, "nan"))
    return [
        (FindingKind.VANISHING, [*stack(gtw=1e-9, function="Sigmoid", weight_std=0.01), OK], STACK),
        (FindingKind.VANISHING, [*stack(gtw=1e-9, weight_std=0.001), OK], StatusEvidence(NUMBERS)),
        (FindingKind.EXPLODING, [*stack(gtw=5e3, weight_std=10 * HE), OK], STACK),
        (FindingKind.EXPLODING, [*stack(gtw=5e3, function="Tanh", weight_std=10.0), OK], StatusEvidence(NUMBERS)),
        (FindingKind.NONFINITE, [*stack(weight_std=10 * HE), *stack("t", function="Tanh", weight_std=10.0)],
         overflow),
        (FindingKind.NONFINITE, [OK], unsafe),
        (FindingKind.VANISHING_THROUGH_TIME, [*rnn, OK], {}),
        (FindingKind.EXPLODING_THROUGH_TIME, [*rnn_up, OK], {}),
        (FindingKind.SATURATED_ACTIVATION, [_layer("t0", function="Tanh", weight_std=1.0), OK],
         SaturationEvidence("Tanh", "1", saturated_units=0.9, saturated_fraction=0.9, units=64,
                            outputs_per_unit=48, weight_std=1.0, target_std=XAVIER)),
        (FindingKind.DEAD_RELU, [_layer("r0", weight_std=HE), OK],
         DeadReluEvidence("ReLU", "1", dead_fraction=0.9, dead_units=58, units=64, outputs_per_unit=48,
                          bias_mean=-3.0, negative_bias=True)),
        (FindingKind.INIT_SCALE, [*stack(weight_std=0.01), OK], replace(INIT, stack=RUN)),
        (FindingKind.INIT_SCALE, [_layer("x0", function="Tanh", weight_std=1.0), OK],
         replace(INIT, scheme="xavier", target_std=XAVIER, follower="Tanh", direction="too large")),
        (FindingKind.DIVERGENCE, [OK], DivergenceEvidence(
            rule="steady-rise", losses=(1.0, 2.0, 4.0, 8.0), first_loss=1.0, last_loss=8.0, rises=3,
            first_nonfinite_at=None, same_batch_rise=1.0, rise_steps=0, optimizer="sgd", lr=1.0, steps=3,
            pre_divergence_steps=1, max_update_to_weight=0.1, max_update_layer="head", suggested_lr=0.01,
            suggested_lr_basis="update-ratio", initial_grad_norm=3.0)),
        (FindingKind.NONFINITE_INPUT, [OK], {}),
        *_precision_scenarios(),
    ]


def _headroom(exponent: int, activation: float = 1.0) -> Headroom:
    """All 100 output-gradient elements in [2^exponent, 2^(exponent + 1))."""
    counts = [0] * (LOG2_HIGH - LOG2_LOW + 1)
    counts[exponent - LOG2_LOW] = 100
    return Headroom(activation, 2.0 ** (exponent + 1), tuple(counts), 0, 100, 90, 100)


def _precision_scenarios() -> list[Scenario]:
    tiny = with_values(_layer("u0"), headroom=_headroom(-20))
    site = with_values(_layer("o0"), index=1, order=1, headroom=_headroom(-6, activation=math.inf))
    norm = with_values(_layer("n0", type_name="LayerNorm"), role="normalization", index=2, order=2,
                       headroom=_headroom(-6, activation=math.inf))
    return [
        (FindingKind.FP16_UNDERFLOW, [tiny, OK], Fp16UnderflowEvidence("fp16", 1.0, 1.0, 0.0, 2.0 ** -19, 100, 0.0,
                                                                        0.01)),
        (FindingKind.FP16_OVERFLOW, [site, norm, OK],
         Fp16OverflowEvidence("activation", 65504.0, math.inf, layers_past_max=2)),
        (FindingKind.FP16_OVERFLOW, [with_values(_layer("g0"), headroom=_headroom(-3)), OK],
         Fp16OverflowEvidence("gradient", 65504.0, scaled_grad_max_abs=65536.0, loss_scale=2.0 ** 18)),
        (FindingKind.BF16_STALE_UPDATE, [with_values(_layer("s0"), headroom=_headroom(-6)), OK],
         Bf16StaleUpdateEvidence(0.9, 90, 100, 2.0 ** -8, "sgd", 0.01)),
    ]


def test_fixes_emit_exactly_what_the_catalogue_links_to_each_finding_kind() -> None:
    emitted: dict[FindingKind, set[RecommendationId]] = {}
    for kind, layers, evidence in _scenarios():
        per_layer = kind not in {FindingKind.DIVERGENCE, FindingKind.NONFINITE_INPUT}
        flagged = [x for x in layers if x is not OK] if per_layer else []
        findings = [Finding(kind, x.name, Severity.ERROR, "m", evidence) for x in flagged] \
            or [Finding(kind, None, Severity.ERROR, "m", evidence)]  # type: ignore[arg-type]
        recs = recommend(findings, layers, has_normalization=False)
        assert recs, kind
        for rec in recs:
            assert rec.id in catalog.related_fixes(kind), (kind.value, rec.id.value)
        emitted.setdefault(kind, set()).update(rec.id for rec in recs)
    for kind in FindingKind:
        expected = {r for r in catalog.related_fixes(kind)
                    if NOT_YET_RECOMMENDED not in FIXES[r].measured}
        if kind in CHECKS:
            assert emitted.get(kind, set()) == expected, kind.value
    # "Not yet recommended" is honest: no scenario emits a recommendation marked so.
    marked = {rid for rid, e in FIXES.items() if NOT_YET_RECOMMENDED in e.measured}
    assert not marked & set().union(*emitted.values())


def test_every_builtin_scan_agrees_with_the_catalogue() -> None:
    """Real scans: each recommendation is justified by a finding the catalogue links to it, and
    every evidence key a finding carries is named in its kind's "What gradcheck measures"."""
    from gradcheck_cli import scan
    from gradcheck_cli.target.zoo import BUILTINS

    # Healthy built-ins have no findings; a healthy one trained at a far too large learning rate
    # diverges (the dynamics findings need --steps).
    runs: list[tuple[str, dict[str, Any]]] = [
        (b.name, {"batches": 1}) for b in BUILTINS if b.verdict != "healthy"]
    runs.append(("relu-he", {"steps": 3, "lr": 10.0, "batches": 2}))
    for name, options in runs:
        report = scan(f"builtin:{name}", **options)
        assert report.findings, name
        kinds = {f.kind for f in report.findings}
        for rec in report.recommendations:
            assert kinds & set(catalog.justifying_findings(rec.id)), (name, rec.id, kinds)
        for finding in report.findings:
            measured = FINDINGS[finding.kind].measured
            for key in finding.evidence:
                # Per-weight keys ("weight_hh_l0.bound") are documented as "<name>.bound".
                documented = f"<name>.{key.split('.', 1)[1]}" if "." in key else key
                assert documented in measured, (finding.kind.value, key)


# --------------------------------------------------------------------------- the commands

@pytest.mark.parametrize("entry_id", ALL_IDS)
def test_explain_prints_every_section(entry_id: str) -> None:
    result = runner.invoke(app, ["explain", entry_id])
    assert result.exit_code == 0, result.output
    out = result.stdout
    entry = catalog.lookup(entry_id)
    assert entry is not None
    assert out.startswith(f"{entry_id}: {entry.title}\n")
    for heading, _ in SECTIONS:
        assert f"\n{heading}\n" in out
    assert "\nReferences\n" in out
    related = "Recommendations it can justify" if entry_id in {k.value for k in FindingKind} \
        else "Justified by the findings"
    assert f"\n{related}\n" in out
    assert result.stderr == ""


def test_explain_lists_related_ids_both_ways() -> None:
    vanishing = runner.invoke(app, ["explain", "vanishing-through-time"]).stdout
    related = vanishing.split("Recommendations it can justify\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in related.splitlines()] == ["gated-rnn"]
    gated = runner.invoke(app, ["explain", "gated-rnn"]).stdout
    justified = gated.split("Justified by the findings\n")[1].split("\n\n")[0]
    assert "vanishing-through-time" in justified.split()
    assert "fp16-underflow" not in justified


def test_explain_keeps_code_verbatim_and_wraps_prose() -> None:
    entry = FIXES[RecommendationId.HE_INIT]
    text = render_explain(entry, frozenset(CHECKS), width=60)
    code = entry.fix.splitlines()
    assert code and all(line.startswith("    ") for line in code)
    lines = text.splitlines()
    for line in code:
        assert "  " + line in lines
    prose = [line for line in lines if line.strip() not in {c.strip() for c in code}]
    assert max(len(line) for line in prose) <= 60


def test_explain_says_when_a_kind_is_not_measured_yet() -> None:
    # The kinds only the training watch finds were said to be "not yet measured" (they are).
    unmeasured = [k for k in FindingKind if k not in CHECKS and k not in TIMELINE_KINDS]
    for kind in unmeasured:
        assert "not yet measured by this version" in runner.invoke(app, ["explain", kind.value]).stdout
    for kind in [*CHECKS, *TIMELINE_KINDS]:
        assert "not yet measured" not in runner.invoke(app, ["explain", kind.value]).stdout


def test_explain_says_which_kinds_only_the_training_watch_measures() -> None:
    watch_only = [k for k in TIMELINE_KINDS if k not in CHECKS]
    assert FindingKind.LOSS_SPIKE in watch_only and FindingKind.NONFINITE not in watch_only
    for kind in FindingKind:
        text = runner.invoke(app, ["explain", kind.value]).stdout
        said = "(measured by the training watch, gradcheck_cli.watch, not by a scan)" in text
        assert said == (kind in watch_only), kind.value


def test_unknown_id_exits_2_with_one_line_and_a_suggestion() -> None:
    result = runner.invoke(app, ["explain", "vanshing"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradcheck: error: unknown finding kind or recommendation id 'vanshing'")
    assert "did you mean 'vanishing'?" in lines[0]
    assert "gradcheck list checks" in lines[0]
    assert result.stdout == ""


def test_unknown_id_without_a_close_match_still_points_to_the_lists() -> None:
    result = runner.invoke(app, ["explain", "zzzz"])
    assert result.exit_code == 2
    assert "did you mean" not in result.stderr
    assert "gradcheck list fixes" in result.stderr


@pytest.mark.parametrize(("command", "ids"), [
    ("checks", [k.value for k in FindingKind]),
    ("fixes", [r.value for r in RecommendationId]),
])
def test_list_prints_every_id_exactly_once_aligned(command: str, ids: list[str]) -> None:
    result = runner.invoke(app, ["list", command])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids
    words = result.stdout.split()
    for entry_id in ids:
        assert words.count(entry_id) == 1, entry_id
    # Aligned: every title starts in the same column.
    titles = FINDINGS if command == "checks" else FIXES
    columns = {line.index(entry.title) for entry, line in zip(titles.values(), lines)}
    assert len(columns) == 1


def test_list_notes_unmeasured_kinds_and_unemitted_fixes() -> None:
    checks = runner.invoke(app, ["list", "checks"]).stdout.splitlines()
    for line in checks:
        kind = FindingKind(line.split()[0])
        # The kinds only the training watch finds were noted as "not yet measured" (they are).
        assert ("not yet measured" in line) == (kind not in CHECKS and kind not in TIMELINE_KINDS)
        assert ("measured by the training watch" in line) == (kind not in CHECKS and kind in TIMELINE_KINDS)
    fixes = runner.invoke(app, ["list", "fixes"]).stdout.splitlines()
    for line in fixes:
        entry = FIXES[RecommendationId(line.split()[0])]
        assert ("not yet recommended" in line) == (NOT_YET_RECOMMENDED in entry.measured)


def test_list_builtins_still_works() -> None:
    result = runner.invoke(app, ["list", "builtins"])
    assert result.exit_code == 0
    assert "builtin:" in result.stdout


@pytest.mark.parametrize("args", [["explain", "vanishing"], ["list", "checks"], ["list", "fixes"]])
def test_explain_and_list_do_not_import_torch(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from gradcheck_cli.cli.app import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr
    assert out.stdout.strip()

