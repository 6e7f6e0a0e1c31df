"""The JSON document of every built-in follows schema gradcheck/report@1 (DESIGN.md)."""

from __future__ import annotations

import json

import pytest

from gradcheck_cli import scan
from gradcheck_cli.report.records import FindingKind, RecommendationId, ScanResult, Severity, Status
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.target.zoo import BUILTINS

NUMBER = (int, float)
NUMBER_OR_NONFINITE = (int, float, str)


def _is_number(value: object, *, nullable: bool = False) -> bool:
    if value is None:
        return nullable
    if isinstance(value, str):
        return value in {"NaN", "Infinity", "-Infinity"}
    return isinstance(value, NUMBER) and not isinstance(value, bool)


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda b: b.name)
def test_json_document_follows_the_schema(builtin) -> None:  # type: ignore[no-untyped-def]
    target = f"builtin:{builtin.name}"
    doc = json.loads(render([ScanResult(target, target, scan(target))], OutputFormat.JSON))
    assert doc["schema"] == "gradcheck/report@1"
    assert doc["target"] == f"builtin:{builtin.name}"
    assert {"batches", "batch_size", "seed", "device", "steps"} <= set(doc["config"])
    assert isinstance(doc["loss"]["kind"], str)
    assert all(_is_number(v) for v in doc["loss"]["values"])
    assert doc["verdict"] in {"healthy", "vanishing", "exploding", "nonfinite"}
    statuses = {s.value for s in Status}
    for i, layer in enumerate(doc["layers"]):
        assert layer["index"] == i
        assert isinstance(layer["name"], str) and layer["name"]
        assert isinstance(layer["type"], str) and isinstance(layer["params"], int)
        assert layer["status"] in statuses
        assert _is_number(layer["grad_norm"], nullable=True)
        assert _is_number(layer["weight_norm"])
        assert _is_number(layer["grad_to_weight"], nullable=True)
        assert isinstance(layer["nonfinite_grads"], int)
        assert isinstance(layer["activation"], dict)
    names = {layer["name"] for layer in doc["layers"]}
    for finding in doc["findings"]:
        FindingKind(finding["kind"])
        Severity(finding["severity"])
        assert finding["layer"] is None or finding["layer"] in names
        assert finding["message"]
        assert all(_is_number(v, nullable=True) or isinstance(v, str) for v in finding["evidence"].values())
    # guard-nonfinite names the module where NaN starts, which may own no parameters
    origins = {f["evidence"].get("origin") for f in doc["findings"]}
    for rec in doc["recommendations"]:
        RecommendationId(rec["id"])
        assert set(rec["layers"]) <= names | origins
        assert rec["title"] and rec["why"] and rec["code"]
