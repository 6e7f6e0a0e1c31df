"""Analysing: measurements -> per-layer status, findings and ranked fixes. Pure: no torch.

Owns the per-layer statistics, the classification and its thresholds, the checks (checks/, one
module per finding kind) and the fixes. May import the shared vocabulary, measure/records.py and
report/records.py; never torch, never target/ or cli/.
"""
