"""The training watch (gradcheck_cli.watch; measure/watch.py, cli/watch.py): what it reads from the
user's own loop, that the loop runs exactly as without it, and what it leaves behind."""

from __future__ import annotations

import importlib.util
import json
import math
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import gradcheck_cli
from gradcheck_cli import api
from gradcheck_cli.cli import watch as watch_module
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.measure.watch import UPDATE_EVERY


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """One intra-op thread: on a busy 2-core machine BatchNorm1d's parallel kernel on 8 rows took
    0.2 s a call with two (threads spinning for a core), 1 ms with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Recorder:
    """Stands in for analyse/timeline.Timeline (same interface): records what the engine hands over."""

    def __init__(self, layers: list[str], thresholds: Any, keep: bool = True) -> None:
        self.layers = layers
        self.keep = keep
        self.blocks: list[StepBlock] = []
        self.events: list[NonfiniteEvent] = []
        self.rows = 0

    def add(self, block: StepBlock) -> None:
        self.rows += len(block.loss)
        if self.keep:
            self.blocks.append(block)

    def nonfinite(self, event: NonfiniteEvent) -> None:
        self.events.append(event)

    def findings(self) -> list[Any]:
        return []

    def series(self) -> None:
        return None


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Recorder]:
    """The Recorder every watch of the test gets; call it to read the last one."""
    made: list[Recorder] = []

    def make(layers: list[str], thresholds: Any) -> Recorder:
        made.append(Recorder(layers, thresholds))
        return made[-1]

    monkeypatch.setattr(watch_module, "_timeline", make)
    return lambda: made[-1]


class Net(nn.Module):
    """A tiny MLP with dropout and BatchNorm: RNG draws and buffers the watch must not disturb."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(16, 1)
        self.poison: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.norm(self.fc1(x))))
        if self.poison == "forward":
            h = torch.sqrt(h - 1e3)  # NaN from finite inputs, in the forward
        elif self.poison == "backward":
            h = torch.sqrt(h * 0)  # finite forward, Inf gradient from sqrt's backward at 0
        return self.fc2(h)


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _sq(tensors: list[torch.Tensor]) -> float:
    """The summed squares of the tensors, in float64 (as the watch reads a layer)."""
    return sum(float(t.double().square().sum()) for t in tensors)


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches: list[Any], clip: bool,
           w: Any = None, after: Callable[[int], None] | None = None) -> None:
    for i, (x, y) in enumerate(batches):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad()
        if w is not None:
            w.step(loss)
        if after is not None:
            after(i)


def _run(kind: str, clip: bool, watched: bool, tmp_path: Path, sample_every: int = 0) -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    opt = _optimizer(kind, model)
    batches = _batches(25)
    if not watched:
        _train(model, opt, batches, clip)
        return model
    with gradcheck_cli.watch(model, opt, every=4, sample_every=sample_every, output=tmp_path / "w.json",
                             quiet=True) as w:
        _train(model, opt, batches, clip, w)
    return model


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("sample_every", [0, 3])
def test_weights_are_bit_identical_with_and_without_the_watch(
        kind: str, clip: bool, sample_every: int, tmp_path: Path, recorder: Any) -> None:
    bare = _run(kind, clip, False, tmp_path)
    watched = _run(kind, clip, True, tmp_path, sample_every)
    for (name, a), b in zip(bare.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name  # weights and BatchNorm's running statistics
    assert recorder().rows == 25


def test_rng_stream_is_untouched(tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(3)
    _run("sgd", False, False, tmp_path)
    bare_next = torch.rand(4)
    torch.manual_seed(3)
    _run("sgd", False, True, tmp_path, sample_every=2)
    assert torch.equal(torch.rand(4), bare_next)


def test_rows_hold_pre_clip_gradient_norms_losses_and_update_ratios(tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model, batches = Net(), _batches(12)
    opt = _optimizer("sgd", model)
    expected: list[tuple[float, list[float], list[float]]] = []
    for x, y in batches:  # the same steps by hand: norms before the clip, |Δw| / |w| of the step
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        layers = (model.fc1, model.norm, model.fc2)
        grads = [_sq([_grad(p) for p in m.parameters()]) for m in layers]
        before = [[p.detach().clone() for p in m.parameters()] for m in layers]
        nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad()
        ratios = [math.sqrt(_sq([p.detach() - b for p, b in zip(m.parameters(), bs)]) / _sq(bs))
                  for m, bs in zip(layers, before)]
        expected.append((float(loss.detach()), grads, ratios))
    torch.manual_seed(0)
    model = Net()
    opt = _optimizer("sgd", model)
    with gradcheck_cli.watch(model, opt, every=5, output=None, quiet=True) as w:
        _train(model, opt, _batches(12), True, w)
    blocks = recorder().blocks
    assert [b.first_step for b in blocks] == [0, 5, 10] and [len(b.loss) for b in blocks] == [5, 5, 2]
    assert recorder().layers == ["fc1", "norm", "fc2"]
    for block in blocks:
        for step, loss, grad_sq in zip(block.steps, block.loss, block.grad_sq):
            assert loss == pytest.approx(expected[step][0], rel=1e-6)
            assert grad_sq == pytest.approx(expected[step][1], rel=1e-6)  # float32 norms
        if block.update_ratio is None:  # no step of the block was one the ratio is sampled on
            assert not any(step % UPDATE_EVERY == 0 for step in block.steps)
            continue
        for step, ratio in zip(block.steps, block.update_ratio):
            if step % UPDATE_EVERY == 0:
                assert ratio == pytest.approx(expected[step][2], rel=1e-6)
            else:
                assert all(math.isnan(r) for r in ratio)
        weights = [_sq([p.detach() for p in m.parameters()]) for m in (model.fc1, model.norm, model.fc2)]
        assert block.nonfinite_grads == (0, 0, 0)
    assert blocks[-1].weight_sq == pytest.approx(weights, rel=1e-6)  # float32 norms


def test_gradient_accumulation_reads_the_accumulated_gradient(tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 3)
    with gradcheck_cli.watch(model, opt, every=1, output=None, quiet=True) as w:
        model(x[:3]).sum().backward()
        model(x[3:]).sum().backward()  # two micro-batches, one step
        total = [_sq([_grad(p) for p in m.parameters()]) for m in (model[0], model[2])]
        opt.step()
        opt.zero_grad()
        w.step(0.0)
    assert recorder().blocks[0].grad_sq[0] == pytest.approx(total, rel=1e-6)  # float32 norms


def test_the_issue_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gradcheck_cli import watch

    class Tiny(nn.Module):  # a forward that returns an object with .loss, as Hugging Face models do
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 1)

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(loss=nn.functional.mse_loss(self.body(input_ids), labels))

    if importlib.util.find_spec("gradcheck_cli.analyse.timeline") is None:  # until analyse/timeline.py lands
        monkeypatch.setattr(watch_module, "_timeline", Recorder)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = [{"input_ids": torch.randn(8, 4), "labels": torch.randn(8, 1)} for _ in range(60)]
    with watch(model, optimizer, every=50, output="gradcheck-watch.json") as w:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()  # noqa: E702 - as the issue writes it
            w.step(loss)
    document = json.loads((tmp_path / "gradcheck-watch.json").read_text())
    assert document["schema"] == "gradcheck/report@1"
    assert document["config"]["steps"] == 60 and document["config"]["mode"] == "watch"
    assert [layer["name"] for layer in document["layers"]] == ["body"]
    assert w.report is not None and w.report.to_dict() == document
    assert "verdict" in capsys.readouterr().err  # the table, on stderr


def test_api_watch_is_the_same_watch(tmp_path: Path, recorder: Any) -> None:
    model = nn.Linear(2, 1)
    with api.watch(model, output=None, quiet=True) as w:
        model(torch.ones(1, 2)).sum().backward()
        w.step(1.5)
    assert isinstance(w, watch_module.Watch) and w.steps == 1
    assert recorder().blocks[0].loss == (1.5,) and recorder().blocks[0].update_ratio is None


def test_hooks_grad_and_modes_are_left_as_they_were(tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model = Net()
    model.norm.eval()
    opt = _optimizer("adamw", model)
    hooks_before = _hook_counts(model, opt)
    w = gradcheck_cli.watch(model, opt, every=3, sample_every=2, output=None, quiet=True)
    assert _hook_counts(model, opt) != hooks_before
    x, y = _batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    grads = [_grad(p) for p in model.parameters()]
    expected = [g.clone() for g in grads]
    w.step(0.0)
    w.close()
    assert _hook_counts(model, opt) == hooks_before
    assert all(p.grad is g and torch.equal(g, e) for p, g, e in zip(model.parameters(), grads, expected))
    assert model.training and not model.norm.training


def _hook_counts(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[int, ...]:
    modules = [len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules()]
    params = [len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
              for p in model.parameters()]
    return (sum(modules), sum(params), len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))


@pytest.mark.parametrize("raised", [ValueError("the user's own error"), KeyboardInterrupt()])
def test_an_exception_in_the_loop_writes_the_report_and_is_re_raised_unchanged(
        raised: BaseException, tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = _optimizer("sgd", model)

    def boom(i: int) -> None:
        if i == 6:
            raise raised

    with pytest.raises(type(raised)) as caught:
        with gradcheck_cli.watch(model, opt, every=4, output=tmp_path / "w.json", quiet=True) as w:
            _train(model, opt, _batches(20), False, w, after=boom)
    assert caught.value is raised
    document = json.loads((tmp_path / "w.json").read_text())
    assert document["config"]["steps"] == 7
    assert recorder().rows == 7 and _hook_counts(model, opt)[2:] == (0, 0)


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_the_first_nonfinite_step_is_flushed_at_once_with_its_origin(
        where: str, tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = _optimizer("sgd", model)

    def poison(i: int) -> None:
        model.poison = where if i + 1 == 7 else None  # step 7's forward

    with gradcheck_cli.watch(model, opt, every=50, output=None, quiet=True) as w:
        _train(model, opt, _batches(10), False, w, after=poison)
    rec = recorder()
    assert [len(b.loss) for b in rec.blocks] == [8, 2]  # flushed right after step 7
    assert len(rec.events) == 1
    event = rec.events[0]
    # The layer nearest the loss with NaN/Inf gradients: fc2's own are finite when the backward
    # breaks (sqrt's gradient at 0 meets fc2's input, which is 0).
    assert (event.step, event.rank, event.layer) == (7, 0, "fc2" if where == "forward" else "norm")
    assert event.origin_op == "sqrt" and event.direction == where
    bad_layers = [rec.layers[li] for li, count in enumerate(rec.blocks[0].nonfinite_grads) if count > 0]
    assert bad_layers == (["fc1", "norm", "fc2"] if where == "forward" else ["fc1", "norm"])


def test_the_replay_leaves_the_model_as_it_was(tmp_path: Path, recorder: Any) -> None:
    """A replayed step ends with the same weights, BatchNorm statistics and RNG as without it."""
    def run(watched: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        torch.manual_seed(0)
        model = Net()
        model.poison = "backward"  # Inf gradients from step 0 on
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if watched:
            with gradcheck_cli.watch(model, opt, output=None, quiet=True) as w:
                _train(model, opt, _batches(3), False, w)
        else:
            _train(model, opt, _batches(3), False)
        return model.state_dict(), torch.rand(3)

    bare, bare_rng = run(False)
    watched, watched_rng = run(True)
    for a, b in zip(bare.values(), watched.values()):  # NaN weights after the steps: NaN == NaN here
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(bare_rng, watched_rng)
    assert recorder().events[0].direction == "backward"


def test_memory_stays_bounded_over_2000_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Recorder] = []

    def make(layers: list[str], thresholds: Any) -> Recorder:
        made.append(Recorder(layers, thresholds, keep=False))
        return made[-1]

    monkeypatch.setattr(watch_module, "_timeline", make)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    w = gradcheck_cli.watch(model, opt, every=50, output=None, quiet=True)

    def steps(n: int) -> None:
        for _ in range(n):
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            w.step(0.5)

    steps(500)  # warm: every cache the loop fills is full
    tracemalloc.start(25)
    steps(100)
    after_600 = _held_by_gradcheck(tracemalloc.take_snapshot())
    steps(1400)
    after_2000 = _held_by_gradcheck(tracemalloc.take_snapshot())
    tracemalloc.stop()
    w.close()
    assert made[0].rows == 2000
    # 1,400 more steps: anything kept per step (a float in a list: 32+ bytes) would add 45 kB;
    # what does grow is bounded: interpreter free lists (100 floats) and torch's dispatch caches.
    assert after_2000 - after_600 < 16_000
    assert w._engine.ring.loss.numel() == 50 and len(w._engine.session._losses) == 1


def _held_by_gradcheck(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by code of the package (torch's own caches are not the watch's)."""
    mine = snapshot.filter_traces([tracemalloc.Filter(True, "*gradcheck_cli*", all_frames=True)])
    return sum(stat.size for stat in mine.statistics("filename"))


def test_bad_settings_are_refused_with_one_line() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(UserError, match="every must be"):
        gradcheck_cli.watch(model, every=0)
    with pytest.raises(UserError, match="sample_every"):
        gradcheck_cli.watch(model, sample_every=-1)


def test_step_after_close_is_refused(tmp_path: Path, recorder: Any) -> None:
    model = nn.Linear(2, 1)
    w = gradcheck_cli.watch(model, output=None, quiet=True)
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.step(0.0)


def _real_or_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real timeline (analyse/timeline.py) once it exists; until then the Recorder."""
    if importlib.util.find_spec("gradcheck_cli.analyse.timeline") is None:
        monkeypatch.setattr(watch_module, "_timeline", Recorder)


def test_a_healthy_training_run_comes_back_healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _real_or_recorder(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    teacher = torch.randn(10, 1)
    g = torch.Generator().manual_seed(5)
    with gradcheck_cli.watch(model, opt, every=20, sample_every=25, output=tmp_path / "w.json",
                             quiet=True, fail_on=["any"]) as w:
        for _ in range(100):
            x = torch.randn(32, 10, generator=g)
            loss = nn.functional.mse_loss(model(x), x @ teacher)
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step(loss)
    assert w.report is not None
    assert w.report.findings == () and w.report.verdict.value == "healthy"


def test_fail_on_raises_after_the_report_is_written(tmp_path: Path, recorder: Any) -> None:
    torch.manual_seed(0)
    model = Net()
    model.poison = "forward"
    opt = _optimizer("sgd", model)
    with pytest.raises(watch_module.WatchGateFailed, match="nonfinite"):
        with gradcheck_cli.watch(model, opt, output=tmp_path / "w.json", quiet=True, fail_on=["nonfinite"]) as w:
            _train(model, opt, _batches(2), False, w)
    assert json.loads((tmp_path / "w.json").read_text())["verdict"] == "nonfinite"


def test_tiny_gradients_are_measured_exactly_not_as_zero(tmp_path: Path, recorder: Any) -> None:
    """Gradients around 1e-30: their float32 squares underflow, so the norm is taken in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradcheck_cli.watch(model, opt, every=1, output=None, quiet=True) as w:
        (model(torch.randn(5, 3)).sum() * 1e-30).backward()
        expected = [_sq([_grad(p) for p in m.parameters()]) for m in model]
        opt.step()
        w.step(0.0)
    assert recorder().blocks[0].grad_sq[0] == pytest.approx(expected, rel=1e-9)
    assert min(expected) > 0
