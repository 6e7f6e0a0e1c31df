"""The report's per-step gradient profile of recurrent layers (LayerReport.through_time, JSON key
`through_time`) and its record of thresholds set away from their defaults (config["thresholds"]):
what the charts of the HTML page and `gradcheck plot` draw."""

from __future__ import annotations

import json

import pytest
from test_through_time import SeqClassifier, _reference_steps, _spectral_norm, _target

from gradcheck_cli import scan
from gradcheck_cli.analyse.recurrence import effective_horizon
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import FindingKind, Report


def test_the_profile_is_plain_autograds_gradient_per_time_step() -> None:
    target = _target(lambda: _spectral_norm(SeqClassifier("RNN"), 0.5), 40)
    report = scan(target)
    reference = _reference_steps(target)
    rnn = next(layer for layer in report.layers if layer.name == "rnn")
    assert rnn.through_time is not None
    assert rnn.through_time.step_grad_rms == pytest.approx(reference, rel=1e-4)
    assert rnn.through_time.near_end == "last"
    assert rnn.through_time.horizon == effective_horizon(reference)
    # the same numbers as the finding's evidence
    finding = next(f for f in report.findings if f.kind is FindingKind.VANISHING_THROUGH_TIME)
    assert finding.evidence["effective_horizon"] == rnn.through_time.horizon
    assert finding.evidence["far_end_step_grad_rms"] == rnn.through_time.step_grad_rms[0]
    assert finding.evidence["near_end_step_grad_rms"] == rnn.through_time.step_grad_rms[-1]


def test_a_layer_read_at_the_first_step_is_oriented_from_the_last() -> None:
    target = _target(lambda: SeqClassifier("GRU", bidirectional=True, read="first"), 12)
    rnn = next(layer for layer in scan(target).layers if layer.name == "rnn")
    assert rnn.through_time is not None and rnn.through_time.near_end == "first"
    assert rnn.through_time.step_grad_rms == pytest.approx(list(reversed(_reference_steps(target))), rel=1e-4)


def test_only_recurrent_layers_carry_the_key_and_it_reads_back() -> None:
    report = scan(_target(lambda: SeqClassifier("LSTM"), 10))
    document = json.loads(json.dumps(report.to_dict()))
    assert [layer["name"] for layer in document["layers"] if "through_time" in layer] == ["rnn"]
    profile = next(layer for layer in document["layers"] if layer["name"] == "rnn")["through_time"]
    assert len(profile["step_grad_rms"]) == 10 and profile["near_end"] == "last"
    assert Report.from_dict(document) == report


def test_thresholds_set_away_from_their_defaults_are_recorded() -> None:
    target = _target(lambda: SeqClassifier("LSTM"), 6)
    assert "thresholds" not in scan(target).config
    changed = scan(target, thresholds=Thresholds(explode_grad_to_weight=50.0, min_stack=6)).config
    assert changed["thresholds"] == {"explode_grad_to_weight": 50.0, "min_stack": 6}
