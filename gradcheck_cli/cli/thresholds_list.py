"""`gradcheck list thresholds`: the thresholds registry as text (no torch: `list` stays fast).

Each threshold is one block: `NAME = DEFAULT  (unit; finding kinds)`, then its meaning and its
source, indented (README, "Thresholds"). The values a scan actually runs with, after pyproject.toml
and recipe settings, are what `gradcheck scan --show-config` prints.
"""

from __future__ import annotations

from gradcheck_cli.analyse.thresholds import REGISTRY, quote


def render_threshold_list() -> str:
    """One block per registry entry, in registry order, with its built-in default."""
    width = max(len(item.name) for item in REGISTRY)
    blocks = []
    for item in REGISTRY:
        value = str(item.default) if isinstance(item.default, int) else quote(item.default)
        blocks.append(f"{item.name:<{width}} = {value}  ({item.unit}; {', '.join(item.kinds)})\n"
                      f"    {item.meaning}\n"
                      f"    source: {item.source}\n")
    return "".join(blocks)
