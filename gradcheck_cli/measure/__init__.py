"""Measuring: the ONLY code that touches torch hooks and autograd on the user's model.

Owns the measurement of a model (hooks, function modes, the probe batch loop, optimizer steps, the
NaN/Inf replay, restoring the model afterwards) and its records (records.py: plain numbers, no
tensors). May import the shared vocabulary and target/ (to call the model and its loss). analyse/
imports records.py only, so this `__init__` and records.py must not import torch.
"""
