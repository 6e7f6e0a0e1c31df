"""Measuring: the ONLY code that touches torch hooks and autograd on the user's model.

session.py: MeasurementSession, which attaches to a model (hooks.py), accumulates mergeable
statistics over batches (accumulators.py -> finish.py -> records.py, statistics.py) and detaches.
The scan drives it: probe.py (seeded batches), steps.py (--steps), replay.py (where a NaN/Inf was
born, nonfinite_origin.py), restore.py (the model comes back as it was). May import the shared
vocabulary and target/ (to call the model and its loss). analyse/ imports records.py only, so this
`__init__`, records.py and statistics.py must not import torch.
"""
