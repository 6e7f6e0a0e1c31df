"""Reporting: the Report record, the CI gate and the output formats (render/, one module per format).

Owns records.py (Report, Finding, Recommendation and their stable enums), gate.py (exit codes and
fingerprints) and render/. Pure: no torch. May import the shared vocabulary only.
"""
