"""verify/: prove a recommendation by measuring it (`--verify`; docs/verify.md).

Owns the appliers (appliers/, one module per family of recommendation ids: each patches a COPY of
the model, or says why it cannot), the re-probe of a patched copy with the same batches, seed and
options, and the comparison before -> after that gives each recommendation its status
(report/verification.py). The user's model is never patched: every applier gets a copy.

May import: the vocabulary (errors, text, config, activations), the package root, target/,
measure/, analyse/ and report/. Nothing but cli/ prints, writes files or exits.
"""
