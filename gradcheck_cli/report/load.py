"""A saved JSON report (schema gradcheck/report@1) back into a Report: `Report.from_dict`.

The inverse of Report.to_dict: reading a document and writing it again gives the same document
(the strings "NaN", "Infinity" and "-Infinity" become floats again, and are written back as those
strings). Evidence comes back as a plain dict of its JSON keys, not the typed record a check made
(report/evidence.py), which reads the same. `gradcheck report FILE` renders what this returns.
A document that is not a report raises ReportFormatError, whose message names what is wrong.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradcheck_cli.report.records import (
    NONFINITE_STRINGS,
    SCHEMA,
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Number,
    Recommendation,
    RecommendationId,
    Report,
    Severity,
    Status,
    ThroughTime,
)
from gradcheck_cli.report.series import WatchSeries
from gradcheck_cli.report.verification import (
    CombinedVerification,
    MetricChange,
    Verification,
    VerificationStatus,
)


class ReportFormatError(ValueError):
    """The document is not a gradcheck/report@1 report (or a field has the wrong shape)."""


def report_from_dict(document: Any) -> Report:
    """The Report a gradcheck/report@1 document describes; ReportFormatError when it is none."""
    if not isinstance(document, Mapping) or document.get("schema") != SCHEMA:
        raise ReportFormatError(f"not a gradcheck report (expected a JSON object with \"schema\": \"{SCHEMA}\")")
    try:
        return _report(document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportFormatError(f"a {SCHEMA} document with a missing or malformed field ({_what(exc)})") from None


def _what(exc: Exception) -> str:
    return f"no {exc}" if isinstance(exc, KeyError) else str(exc)


def _report(doc: Mapping[str, Any]) -> Report:
    verification = doc.get("verification")
    return Report(
        target=_str(doc["target"]),
        tool_version=_str(doc["tool"]["version"]),
        config=dict(doc["config"]),
        loss=LossInfo(kind=_str(doc["loss"]["kind"]), values=tuple(_float(v) for v in doc["loss"]["values"])),
        verdict=Status(doc["verdict"]),
        layers=tuple(_layer(item) for item in doc["layers"]),
        findings=tuple(_finding(item) for item in doc["findings"]),
        recommendations=tuple(_recommendation(item) for item in doc["recommendations"]),
        verification=_combined(verification) if verification is not None else None,
        series=WatchSeries.from_dict(doc["series"]) if doc.get("series") is not None else None,
    )


def _layer(item: Mapping[str, Any]) -> LayerReport:
    return LayerReport(
        name=_str(item["name"]), type=_str(item["type"]), index=_int(item["index"]), params=_int(item["params"]),
        status=Status(item["status"]), grad_norm=_optional_float(item["grad_norm"]),
        weight_norm=_float(item["weight_norm"]), grad_to_weight=_optional_float(item["grad_to_weight"]),
        nonfinite_grads=_int(item["nonfinite_grads"]),
        activation={_str(k): _number(v) for k, v in item["activation"].items()},
        update_to_weight=_optional_float(item["update_to_weight"]),
        through_time=_through_time(item["through_time"]) if item.get("through_time") is not None else None,
    )


def _through_time(item: Mapping[str, Any]) -> ThroughTime:
    return ThroughTime(step_grad_rms=tuple(_float(v) for v in item["step_grad_rms"]),
                       near_end=_str(item["near_end"]), horizon=_optional_int(item["horizon"]))


def _finding(item: Mapping[str, Any]) -> Finding:
    layer = item["layer"]
    return Finding(kind=FindingKind(item["kind"]), layer=None if layer is None else _str(layer),
                   severity=Severity(item["severity"]), message=_str(item["message"]),
                   evidence={_str(k): _number(v) for k, v in item["evidence"].items()},
                   step=_optional_int(item.get("step")), rank=_optional_int(item.get("rank")))


def _recommendation(item: Mapping[str, Any]) -> Recommendation:
    verification = item.get("verification")
    return Recommendation(id=RecommendationId(item["id"]), title=_str(item["title"]),
                          layers=tuple(_str(name) for name in item["layers"]), why=_str(item["why"]),
                          code=_str(item["code"]),
                          verification=_verification(verification) if verification is not None else None)


def _verification(item: Mapping[str, Any]) -> Verification:
    return Verification(
        status=VerificationStatus(item["status"]), summary=_str(item["summary"]),
        verdict_before=_str(item["verdict_before"]), verdict_after=_optional_str(item["verdict_after"]),
        changes=tuple(MetricChange(metric=_str(c["metric"]), layer=_optional_str(c["layer"]),
                                   before=_number(c["before"]), after=_number(c["after"])) for c in item["changes"]),
        resolved=tuple(_str(s) for s in item["resolved"]), remaining=tuple(_str(s) for s in item["remaining"]),
        introduced=tuple(_str(s) for s in item["introduced"]), batches=_int(item["batches"]),
        steps=_int(item["steps"]),
    )


def _combined(item: Mapping[str, Any]) -> CombinedVerification:
    return CombinedVerification(applied=tuple(_str(s) for s in item["applied"]),
                                verdict_before=_str(item["verdict_before"]),
                                verdict_after=_optional_str(item["verdict_after"]),
                                summary=_str(item["summary"]), batches=_int(item["batches"]))


def _number(value: Any) -> Number:
    """An evidence/activation value: the non-finite strings back to floats, the rest as written."""
    if isinstance(value, str):
        return NONFINITE_STRINGS.get(value, value)
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected a number or a string, got {type(value).__name__}")


def _float(value: Any) -> float:
    number = _number(value)
    if isinstance(number, str) or number is None:
        raise TypeError(f"expected a number, got {value!r}")
    return number  # an int stays an int: written back as it was read


def _optional_float(value: Any) -> float | None:
    return None if value is None else _float(value)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _optional_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else _str(value)
