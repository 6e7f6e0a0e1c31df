"""Integrations: the training watch (gradcheck_cli.watch) as a training framework's callback.

lightning.py: GradcheckCallback, a Lightning `Callback` (extra `.[lightning]`).
huggingface.py: GradcheckTrainerCallback, a Hugging Face `TrainerCallback` (extra `.[transformers]`).
Each starts the watch when training starts, calls `w.step(loss)` once per optimizer step and
closes it (the report written) when training ends; README "Watching training" says what each does
with gradient accumulation, several optimizers and an exception in training.

May import the shared vocabulary, the package root, measure/ (the loss tap, output_loss.py),
analyse/ and report/ (the types of the watch's thresholds and report) and, of cli/, only
cli/watch.py (the public watch, which writes and prints the report); nothing of the package
imports integrations/. Importing this package imports no framework and no torch: each
module imports its framework when it is imported itself (`import gradcheck_cli` stays light).
"""
