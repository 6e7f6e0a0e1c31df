"""The labeled corpus (tests/corpus/): every model gets the verdict it is labeled with.

Labels come from each model's construction and a plain-autograd reference measurement recorded in
its docstring (tests/corpus/reference.py re-computes them), not from gradcheck.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcheck_cli import scan

CORPUS = sorted(p for p in (Path(__file__).parent / "corpus").glob("*_*.py") if p.name != "reference.py")
LABELS = {"healthy", "vanishing", "exploding", "nonfinite"}


def test_the_corpus_covers_every_label() -> None:
    counts = {label: sum(p.name.startswith(label + "_") for p in CORPUS) for label in LABELS}
    assert counts["healthy"] >= 12 and all(counts[label] >= 3 for label in LABELS), counts


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_verdict(path: Path) -> None:
    label = path.name.split("_")[0]
    assert label in LABELS
    report = scan(str(path))
    assert report.verdict.value == label, [f.message for f in report.findings][:3]
    if label == "healthy":
        assert report.findings == () and report.recommendations == ()
    else:
        assert report.recommendations, "a broken model must get at least one recommendation"
