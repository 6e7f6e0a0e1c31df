"""Analysing: measurements -> per-layer status, findings and ranked fixes. Pure: no torch.

pipeline.py: `analyse(measurements, config, thresholds) -> Report`. Owns the per-layer statistics
(stats.py, structure.py), the classification (classify.py, depth.py, recurrence.py, init_std.py),
the thresholds registry (thresholds.py), the checks (checks/, one module per finding kind) and the
fixes (fixes.py: candidates -> resolve -> rank; cause_fixes.py, fix_gradients.py,
fix_nonfinite.py). May import the shared vocabulary, measure/records.py (and the statistics it is
made of) and report/ (the records findings and recommendations are made of); never torch, never
target/ or cli/.
"""
