"""Baselines: findings a team has accepted, so that CI fails only on new ones.

A baseline identifies a finding by its fingerprint, kind and layer (gate.fingerprint), never by
its numbers: a measurement that moves from 1.2e3 to 1.3e3 is the same known finding, a new layer
or a new kind is not. The file (schema gradcheck/baseline@1) is sorted and carries no numbers, so
it diffs cleanly in review:

    {"schema": "gradcheck/baseline@1",
     "findings": [{"fingerprint": "exploding:net.0", "target": "model.py", "kind": "exploding",
                   "layer": "net.0"}]}

This module turns results into that text and text back into fingerprints; cli/app.py reads and
writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gradcheck_cli.errors import UserError
from gradcheck_cli.report.gate import fingerprint
from gradcheck_cli.report.records import ScanResult

SCHEMA = "gradcheck/baseline@1"


def baseline_text(results: Sequence[ScanResult]) -> str:
    """The baseline document of every finding of the results, sorted, ending with a newline."""
    entries = {
        (fingerprint(f), result.target): {"fingerprint": fingerprint(f), "target": result.target,
                                          "kind": f.kind.value, "layer": f.layer}
        for result in results if result.report is not None
        for f in result.report.findings
    }
    document = {"schema": SCHEMA, "findings": [entries[key] for key in sorted(entries)]}
    return json.dumps(document, indent=2) + "\n"


def parse_baseline(text: str, source: str) -> frozenset[str]:
    """The fingerprints of a baseline document; ``source`` names the file in errors."""
    hint = "write one with --write-baseline FILE"
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"baseline {source}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}); {hint}") from None
    except RecursionError:  # json recurses once per nesting level: thousands of '[' end the stack
        raise UserError(f"baseline {source}: nested too deeply to read (a baseline is an object holding "
                        f"a flat list of findings); {hint}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise UserError(f"baseline {source}: expected a JSON object with \"schema\": \"{SCHEMA}\"; "
                        f"{hint}")
    findings = document.get("findings")
    if not isinstance(findings, list):
        raise UserError(f"baseline {source}: \"findings\" must be a list; {hint}")
    known = set()
    for number, entry in enumerate(findings, start=1):
        mark = entry.get("fingerprint") if isinstance(entry, dict) else None
        if not isinstance(mark, str) or ":" not in mark:
            raise UserError(f"baseline {source}: finding {number} has no \"fingerprint\" of the form "
                            f"\"kind:layer\"; {hint}")
        known.add(mark)
    return frozenset(known)
