"""The watch's framework callbacks (gradcheck_cli/integrations/): Lightning's GradcheckCallback and
Hugging Face's GradcheckTrainerCallback on tiny models built in code, and the loss tap
(measure/output_loss.py). The reference numbers come from plain autograd or from the framework's
own log, never from gradcheck. Each test skips when its framework is not installed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.output_loss import OutputLoss

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _nonfinite(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["kind"] == "nonfinite"]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()) and \
        all(not p._backward_hooks for p in model.parameters())


def test_importing_the_integrations_package_imports_no_framework() -> None:
    code = ("import sys, gradcheck_cli, gradcheck_cli.integrations\n"
            "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "extra"), [("lightning", "lightning"), ("huggingface", "transformers")])
def test_without_the_framework_the_import_error_names_the_extra(module: str, extra: str) -> None:
    code = ("import sys\n"
            "for name in ('lightning', 'lightning.pytorch', 'pytorch_lightning', 'transformers'):\n"
            "    sys.modules[name] = None\n"
            f"import gradcheck_cli.integrations.{module}\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "ImportError: gradcheck's" in run.stderr
    assert f"pip install 'gradcheck[{extra}]'" in run.stderr


# -- the loss tap -----------------------------------------------------------------------------


class LossOutput(nn.Module):
    """Returns {"loss": mean square} like a Hugging Face model given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor, num_items_in_batch: int | None = None) -> dict[str, torch.Tensor]:
        squares = self.fc(x).square()
        return {"loss": squares.mean() if num_items_in_batch is None else squares.sum() / num_items_in_batch}


def test_output_loss_is_the_mean_of_micro_batch_means_or_the_sum_of_shares() -> None:
    torch.manual_seed(0)
    model, a, b = LossOutput(), torch.randn(4, 3), torch.randn(4, 3)
    tap = OutputLoss(model)
    tap.attach()
    with torch.no_grad():
        whole = model.fc(torch.cat([a, b])).square().mean().item()
        model(a), model(b)
        means = tap.take()
        model(a, num_items_in_batch=8), model(b, num_items_in_batch=8)
        shares = tap.take()
        model(a), model.eval(), model(b)
        only_training = tap.take()
        model.train()
    assert means is not None and shares is not None and only_training is not None
    assert means.item() == pytest.approx(whole, rel=1e-6) and shares.item() == pytest.approx(whole, rel=1e-6)
    assert only_training.item() == pytest.approx(model.fc(a).square().mean().item(), rel=1e-6)
    assert tap.take() is None
    tap.detach()
    assert _no_hooks(model)


def test_output_loss_counts_a_replay_of_the_same_batch_once() -> None:
    model, x = LossOutput(), torch.randn(4, 3)
    tap = OutputLoss(model)
    tap.attach()
    with torch.no_grad():
        once = model(x)["loss"].item()
        model(x)  # the watch's replay runs the very same tensors again
        taken = tap.take()
        model(x.clone())  # equal values in a new tensor: a new micro-batch
        model(x.clone())
        twice = tap.take()
    assert taken is not None and taken.item() == pytest.approx(once)
    assert twice is not None and twice.item() == pytest.approx(once)
    tap.detach()


# -- Lightning ----------------------------------------------------------------------------------


def _lightning() -> Any:
    return pytest.importorskip("lightning.pytorch")


def _lightning_module(pl: Any, poison_step: int = -1, manual: bool = False, fail_step: int = -1) -> Any:
    """A 2-layer MLP regressor; at `poison_step` its hidden activation becomes NaN (that step only);
    at `fail_step` its training_step raises."""

    class Regressor(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1))
            self.automatic_optimization = not manual
            self.poison = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.net[1](self.net[0](x))
            return self.net[2](hidden * math.nan if self.poison else hidden)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == fail_step:
                raise RuntimeError("the data loader broke")
            self.poison = self.global_step == poison_step
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            if manual:
                optimizer = self.optimizers()
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            return loss

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.poison = False

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    return Regressor()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=generator)
    return [(x[i:i + 4], x[i:i + 4, :1].sin()) for i in range(0, 64, 4)]


def _fit(pl: Any, module: Any, callback: Any, max_steps: int, **trainer_options: Any) -> Any:
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         **trainer_options)
    x = torch.cat([x for x, _ in _batches()])
    y = torch.cat([y for _, y in _batches()])
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4))
    return trainer


def _pre_clip_norms(module: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Plain autograd: each Linear's gradient norm of the summed losses of `batches`, at the start."""
    module.zero_grad()
    for x, y in batches:
        nn.functional.mse_loss(module(x), y).backward()
    norms = {name: math.sqrt(sum(float(p.grad.square().sum()) for p in layer.parameters() if p.grad is not None))
             for name, layer in module.named_modules() if isinstance(layer, nn.Linear)}
    module.zero_grad()
    return norms


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lightning_one_watch_step_per_optimizer_step(tmp_path: Path, accumulate: int) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl)
    x, y = _batches()[accumulate - 1]  # the last micro-batch of step 0
    with torch.no_grad():
        first_loss = nn.functional.mse_loss(module(x), y).item()
    callback = GradcheckCallback(every=4, output=tmp_path / "watch.json", quiet=True)
    trainer = _fit(pl, module, callback, max_steps=6, accumulate_grad_batches=accumulate)
    report = _read(tmp_path / "watch.json")
    assert trainer.global_step == 6 and report["config"]["steps"] == 6
    assert [layer["name"] for layer in report["layers"]] == ["net.0", "net.2"]
    assert report["series"]["steps"] == list(range(6))
    assert report["series"]["loss"][0] == pytest.approx(first_loss, rel=1e-6)  # not divided by accumulate
    assert report["verdict"] == "healthy" and report["findings"] == []
    assert callback.watch is None and callback.report is not None and _no_hooks(module)


def test_lightning_training_is_bit_identical_with_and_without_the_callback(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    options: dict[str, Any] = {"max_steps": 5, "accumulate_grad_batches": 2, "gradient_clip_val": 0.5}
    bare, watched = _lightning_module(pl), _lightning_module(pl)
    _fit(pl, bare, pl.Callback(), **options)
    _fit(pl, watched, GradcheckCallback(every=2, sample_every=2, output=tmp_path / "w.json", quiet=True), **options)
    for (name, a), (_, b) in zip(bare.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


def test_lightning_gradient_clipping_comes_after_the_watch_reads(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl)
    expected = _pre_clip_norms(module, _batches()[:1])
    callback = GradcheckCallback(every=4, output=tmp_path / "watch.json", quiet=True)
    _fit(pl, module, callback, max_steps=2, gradient_clip_val=1e-3)
    report = _read(tmp_path / "watch.json")
    assert min(expected.values()) > 100 * 1e-3  # clipping changes these gradients a lot
    measured = {layer["name"]: layer["grad_norm"] for layer in report["layers"]}
    assert measured == pytest.approx(expected, rel=1e-5)
    at_step_0 = {layer["name"]: layer["grad_norm"][0] for layer in report["series"]["layers"]}
    assert at_step_0 == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("manual", [False, True])
def test_lightning_nan_at_a_known_step(tmp_path: Path, manual: bool) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl, poison_step=3, manual=manual)
    callback = GradcheckCallback(every=50, output=tmp_path / "watch.json", quiet=True)
    trainer = _fit(pl, module, callback, max_steps=5)
    report = _read(tmp_path / "watch.json")
    assert trainer.global_step == 5 and report["config"]["steps"] == 5
    [finding] = _nonfinite(report)
    assert finding["step"] == 3 and report["verdict"] == "nonfinite"
    # Caught after the backward and before the update (on_before_optimizer_step): the replay ran
    # the step's batch with the weights that made the NaN, and found it in the forward.
    assert finding["evidence"]["direction"] == "forward", finding


def test_lightning_two_optimizers_one_watch_step_per_batch(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    class TwoParts(pl.LightningModule):  # type: ignore[misc, name-defined]
        """Manual optimization stepping two optimizers per batch (as GANs do)."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.encoder, self.head = nn.Linear(6, 4), nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.head(self.encoder(x)), y)
            for optimizer in self.optimizers():
                optimizer.zero_grad()
            self.manual_backward(loss)
            for optimizer in self.optimizers():
                optimizer.step()
            return loss

        def configure_optimizers(self) -> list[torch.optim.Optimizer]:
            return [torch.optim.SGD(part.parameters(), lr=0.05) for part in (self.encoder, self.head)]

    torch.manual_seed(0)
    trainer = _fit(pl, TwoParts(), GradcheckCallback(output=tmp_path / "watch.json", quiet=True), max_steps=6)
    report = _read(tmp_path / "watch.json")
    assert trainer.global_step == 6  # Lightning counts each optimizer's step: 3 batches
    assert report["config"]["steps"] == 3 and report["series"]["steps"] == [0, 1, 2]
    assert [layer["name"] for layer in report["layers"]] == ["encoder", "head"]
    assert report["findings"] == [] and report["config"]["optimizer"] is None
    # No update ratio: over one optimizer's step the other optimizer's layer would read 0.
    assert all(value is None for layer in report["series"]["layers"] for value in layer["update_to_weight"])


def test_lightning_manual_optimization_without_a_returned_loss_says_so(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl, manual=True)
    module.training_step = lambda batch, batch_idx: _manual_step_without_loss(module, batch)
    callback = GradcheckCallback(output=tmp_path / "watch.json", quiet=True)
    with pytest.raises(UserError, match="return it from training_step"):
        _fit(pl, module, callback, max_steps=3)
    assert (tmp_path / "watch.json").exists() and _no_hooks(module)


def _manual_step_without_loss(module: Any, batch: Any) -> None:
    x, y = batch
    optimizer = module.optimizers()
    optimizer.zero_grad()
    module.manual_backward(nn.functional.mse_loss(module(x), y))
    optimizer.step()


def test_lightning_an_error_in_training_still_writes_the_report(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl, fail_step=3)
    callback = GradcheckCallback(output=tmp_path / "watch.json", quiet=True, fail_on=["exploding"])
    with pytest.raises(RuntimeError, match="the data loader broke"):
        _fit(pl, module, callback, max_steps=6)
    report = _read(tmp_path / "watch.json")
    assert report["config"]["steps"] == 3 and report["series"]["steps"] == [0, 1, 2]
    assert callback.watch is None and _no_hooks(module)
    assert not trainer_optimizer_hooks(module)


def trainer_optimizer_hooks(module: Any) -> list[Any]:
    optimizer = module.trainer.optimizers[0]
    return list(optimizer._optimizer_step_pre_hooks) + list(optimizer._optimizer_step_post_hooks)


def test_lightning_fail_on_raises_out_of_fit(tmp_path: Path) -> None:
    pl = _lightning()
    from gradcheck_cli.cli.watch import WatchGateFailed
    from gradcheck_cli.integrations.lightning import GradcheckCallback

    module = _lightning_module(pl, poison_step=1)
    callback = GradcheckCallback(output=tmp_path / "watch.json", quiet=True, fail_on=["nonfinite"])
    with pytest.raises(WatchGateFailed, match="nonfinite"):
        _fit(pl, module, callback, max_steps=3)
    assert _read(tmp_path / "watch.json")["verdict"] == "nonfinite"
    assert callback.report is not None and callback.report.verdict.value == "nonfinite"


# -- Hugging Face Trainer -----------------------------------------------------------------------


def _transformers() -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    return transformers


def _gpt2(transformers: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _token_rows() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 64, (48, 12), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": row, "labels": row} for row in ids]


def _train(transformers: Any, model: Any, callbacks: list[Any], tmp_path: Path, **options: Any) -> Any:
    settings = {"output_dir": str(tmp_path / "trainer"), "use_cpu": True, "report_to": [], "max_steps": 6,
                "per_device_train_batch_size": 4, "save_strategy": "no", "logging_steps": 1,
                "disable_tqdm": True, "seed": 0, **options}
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(**settings),
                                   train_dataset=_token_rows(), callbacks=callbacks)
    trainer.train()
    return trainer


def test_hf_trainer_report_with_gradient_accumulation(tmp_path: Path) -> None:
    transformers = _transformers()
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    model = _gpt2(transformers)
    callback = GradcheckTrainerCallback(every=4, output=tmp_path / "watch.json", quiet=True)
    trainer = _train(transformers, model, [callback], tmp_path, gradient_accumulation_steps=2)
    report = _read(tmp_path / "watch.json")
    names = [layer["name"] for layer in report["layers"]]
    assert trainer.state.global_step == 6 and report["config"]["steps"] == 6
    assert "transformer.h.0.attn.c_attn" in names and "transformer.h.0.mlp.c_fc" in names
    assert report["series"]["steps"] == list(range(6))
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6
    assert report["series"]["loss"] == pytest.approx([float(v) for v in logged], abs=1e-3)
    assert report["verdict"] == "healthy" and report["findings"] == []
    assert callback.watch is None and _no_hooks(model)


def test_hf_trainer_training_is_bit_identical_with_and_without_the_callback(tmp_path: Path) -> None:
    transformers = _transformers()
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    bare, watched = _gpt2(transformers), _gpt2(transformers)
    _train(transformers, bare, [], tmp_path / "bare", gradient_accumulation_steps=2, max_steps=4)
    callback = GradcheckTrainerCallback(every=2, sample_every=2, output=tmp_path / "w.json", quiet=True)
    _train(transformers, watched, [callback], tmp_path / "watched", gradient_accumulation_steps=2, max_steps=4)
    for (name, a), (_, b) in zip(bare.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(a, b), name


class Poison:
    """A test-side forward hook that makes one block's MLP output NaN during step `at` only."""

    def __init__(self, transformers: Any, model: Any, at: int) -> None:
        self.at, self.on = at, False
        model.transformer.h[0].mlp.register_forward_hook(self._hook)
        poison = self

        class Switch(transformers.TrainerCallback):  # type: ignore[misc, name-defined]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                poison.on = state.global_step == poison.at

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                poison.on = False

        self.callback = Switch()

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        return output * math.nan if self.on else None


def test_hf_trainer_nan_at_a_known_step(tmp_path: Path) -> None:
    transformers = _transformers()
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    model = _gpt2(transformers)
    poison = Poison(transformers, model, at=4)
    callback = GradcheckTrainerCallback(every=50, output=tmp_path / "watch.json", quiet=True)
    _train(transformers, model, [poison.callback, callback], tmp_path, max_steps=6)
    report = _read(tmp_path / "watch.json")
    [finding] = _nonfinite(report)
    assert finding["step"] == 4 and report["verdict"] == "nonfinite" and report["config"]["steps"] == 6
    assert finding["evidence"]["direction"] == "forward", finding
    assert finding["evidence"]["origin_module"].startswith("transformer.h.0.mlp"), finding


def test_hf_trainer_without_a_model_loss_says_so(tmp_path: Path) -> None:
    transformers = _transformers()
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    model = _gpt2(transformers)
    callback = GradcheckTrainerCallback(output=tmp_path / "watch.json", quiet=True)
    with pytest.raises(UserError, match="no 'loss'"):
        _train(transformers, model, [callback], tmp_path, label_smoothing_factor=0.1)
    assert (tmp_path / "watch.json").exists() and callback.watch is None and _no_hooks(model)


def test_hf_trainer_error_leaves_the_watch_to_close(tmp_path: Path) -> None:
    transformers = _transformers()
    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

    class Breaks(transformers.TrainerCallback):  # type: ignore[misc, name-defined]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                raise RuntimeError("the data loader broke")

    model = _gpt2(transformers)
    callback = GradcheckTrainerCallback(output=tmp_path / "watch.json", quiet=True)
    with pytest.raises(RuntimeError, match="the data loader broke"):
        _train(transformers, model, [callback, Breaks()], tmp_path)
    assert callback.watch is not None and not (tmp_path / "watch.json").exists()
    callback.close()  # what the atexit handler does when the process ends
    assert _read(tmp_path / "watch.json")["config"]["steps"] == 2 and _no_hooks(model)
    callback.close()  # a second close does nothing


TRAIN_AND_FAIL = """
import sys, torch, transformers
from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback

class Breaks(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("the data loader broke")

torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64,
                                                             n_positions=32, bos_token_id=0, eos_token_id=0))
rows = [{"input_ids": r, "labels": r} for r in torch.randint(0, 64, (16, 8))]
args = transformers.TrainingArguments(output_dir=sys.argv[1] + "/trainer", use_cpu=True, report_to=[], max_steps=4,
                                      per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True)
callback = GradcheckTrainerCallback(output=sys.argv[1] + "/watch.json", quiet=True)
transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[Breaks(), callback]).train()
"""


def test_hf_trainer_error_the_report_is_written_at_process_exit(tmp_path: Path) -> None:
    _transformers()
    script = tmp_path / "train.py"
    script.write_text(TRAIN_AND_FAIL, encoding="utf-8")
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert run.returncode == 1 and "the data loader broke" in run.stderr
    report = _read(tmp_path / "watch.json")
    assert report["config"]["steps"] == 2 and report["series"]["steps"] == [0, 1]


def test_torch_optimizer_unwraps_a_wrapper() -> None:
    pytest.importorskip("transformers")
    from gradcheck_cli.integrations import huggingface

    sgd = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    assert huggingface._torch_optimizer(SimpleNamespace(optimizer=sgd)) is sgd
    assert huggingface._torch_optimizer(sgd) is sgd and huggingface._torch_optimizer(None) is None
