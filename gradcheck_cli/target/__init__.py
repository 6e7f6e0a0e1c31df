"""Loading targets: TARGET -> Target(build_model, make_batch, loss_fn, name), and running user code.

Owns model files, `pkg.module:attr`, `builtin:NAME` (zoo/), checkpoints, probe batches and the
default losses, and the isolation of user code (seeding, stdout, process state, timeouts, memory).
May import the shared vocabulary (errors, text, config) only; measure/ and the pipeline import it.
"""
