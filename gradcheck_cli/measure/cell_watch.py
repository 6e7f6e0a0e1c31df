"""Recurrence written by hand: one layer called once per time step in a Python loop.

A cell module called in a loop (nn.RNNCell, nn.GRUCell, nn.LSTMCell, or a user's own cell such as
makemore's `h = tanh(Linear(cat([x_t, h])))`) is one row of the report called T times. Its
recurrence is the same as nn.RNN's, with the depth of the product of Jacobians equal to the number
of calls (Pascanu, Mikolov & Bengio 2013), so the measurement session measures it here and the through-time rules
of classify.py judge it like a fused recurrent layer.

What counts as a recurrence (mechanism, not module type): within one forward, a layer (a module
owning parameters) whose call k+1 receives an input *derived from call k's output*: an autograd
path leads from that input back to the output node(s) of call k (an RNNCell's hx is the output
itself; makemore's input is cat([x_t, tanh(output)])). The calls linked that way form a chain; a
chain of at least MIN_CALLS calls is a recurrence. A weight-shared encoder applied to two inputs
never links (neither input comes from the other call), and a shared block applied twice (ALBERT-
style depth sharing, tests/corpus/healthy_shared_block_inplace.py) is too short a chain.
MIN_CALLS = 4 is the number of identical layers classify.py needs before it calls a gradient
growth through a stack geometric (Thresholds.min_stack): a product of fewer factors is no trend.

The walk visits only nodes created after the outputs it looks for (autograd nodes carry a
creation sequence number and only point to older ones), so the encoder graph upstream of a loop
is never walked; WALK_BUDGET bounds it anyway.

Vanilla or gated. Pascanu's bound (recurrence.py) holds for a vanilla cell, where every path from
one step's state to the next passes through the layer (h_t = f(W [x_t, h_(t-1)])). A gated cell
(GRU: h_t = (1 - z) h_(t-1) + z h~; LSTM's cell state) or a residual block has a path around the
layer, whose factor is learned, and such cells are never called vanishing through time (classify.py
and tests/corpus/MANIFEST.md: they decay at init and learn to keep the gradient). torch's own
cells are known by type; for any other layer the walk from call k+1's input looks for the outputs
of call k - 1 on paths that do not cross call k's outputs: finding one is a path around the
layer. A walk that ran out of budget cannot tell, and the cell is "unknown" (not vanilla).

Measured per chain step: the gradient reaching the state that call k passes to call k+1, by a
tensor hook on each input of call k+1 that carries it (an LSTMCell's h and c together), as an
RMS over its elements. That is T - 1 values for T calls, ordered first to last call: the last
call is nearest the loss whatever the direction the loop walks the sequence, since the state
flows from call to call. The RMS is kept as (log2 of the max |g|, mean square of g / max |g|), so
steps whose gradients lie near or below the float32 range (the far steps of a vanishing cell hold
~1e-40) are neither squared into 0 nor lost when steps and batches are combined.

A chain needs the state as a positional argument (forward pre-hooks see no keyword arguments), and
an autograd path between calls: torch.utils.checkpoint(..., use_reentrant=True) detaches it.
When calls form several chains in one forward, the longest ones are combined; when the probe
batches give chains of different lengths, no profile is reported.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradcheck_cli.measure.records import RecurrentWeight
from gradcheck_cli.measure.spectra import cell_state_weights, recurrent_weights
from gradcheck_cli.measure.statistics import StepSquares

MIN_CALLS = 4
WALK_BUDGET = 2048
"""Autograd nodes one walk may visit (a cell's step is a few dozen; the walk is pruned by age)."""

# torch's own recurrent modules, by class (a user's class may share the name): vanilla or gated.
TORCH_CELLS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.RNNCell, "vanilla"), (nn.RNN, "vanilla"), (nn.GRUCell, "gated"), (nn.LSTMCell, "gated"),
    (nn.GRU, "gated"), (nn.LSTM, "gated"))


@dataclass(frozen=True)
class CellLoop:
    """The measured recurrence of one layer, in plain numbers."""

    steps: tuple[float, ...]
    """RMS of the gradient reaching the state passed from call k to call k+1, first to last."""
    kind: str
    """vanilla | gated | unknown (see the module docstring)."""
    weights: tuple[RecurrentWeight, ...]


@dataclass(frozen=True)
class _Walk:
    derived: tuple[torch.Tensor, ...]
    """The inputs of call k+1 that carry call k's output."""
    around: bool
    """A path from those inputs reaches call k-1's outputs without crossing call k's."""
    complete: bool
    path: tuple[tuple[Any, int], ...]
    """Nodes from the first derived input to call k's output, with the branch taken from each."""


@dataclass
class _Chain:
    calls: int = 1
    steps: list[list[torch.Tensor]] = field(default_factory=list)
    """Per step, one (log2 max |g|, normalised mean square, numel) tensor per state input."""
    around: bool = False
    complete: bool = True
    state_columns: str | None = None
    activation: str | None = None


@dataclass
class _Track:
    """One layer during one forward."""

    prev: list[Any] = field(default_factory=list)
    earlier: list[Any] = field(default_factory=list)
    chain: _Chain | None = None
    done: list[_Chain] = field(default_factory=list)


@dataclass
class _Profile:
    """One layer over the probe batches."""

    steps: list[list[tuple[float, float, float]]] = field(default_factory=list)
    batches: int = 0
    ragged: bool = False
    kinds: set[str] = field(default_factory=set)
    state_columns: str | None = None
    activation: str | None = None


class CellWatch:
    """Chains of calls per layer; the session calls before_call/after_call from its module hooks
    (hooks.py) and end_forward after each batch's backward (session.on_batch)."""

    def __init__(self) -> None:
        self._tracks: dict[str, _Track] = {}
        self._profiles: dict[str, _Profile] = {}

    def before_call(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        track = self._tracks.setdefault(name, _Track())
        if not track.prev:
            return
        inputs = [t for t in _tensors(args) if t.grad_fn is not None and t.is_floating_point()]
        in_chain = track.chain is not None
        walk = _walk(inputs, track.prev, track.earlier if in_chain else [])
        if not walk.derived:
            self._close(track)
            return
        if track.chain is None:
            track.chain = _Chain(state_columns=_state_columns(walk.path, inputs),
                                 activation=_activation(walk.path))
        chain = track.chain
        chain.calls += 1
        chain.around = chain.around or walk.around
        chain.complete = chain.complete and walk.complete
        slots: list[torch.Tensor] = []
        chain.steps.append(slots)
        for tensor in walk.derived:
            tensor.register_hook(_step_hook(slots))

    def after_call(self, name: str, output: Any) -> None:
        track = self._tracks.setdefault(name, _Track())
        track.earlier = track.prev
        track.prev = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]

    def end_forward(self) -> None:
        """After the backward: fold this forward's longest chains into each layer's profile."""
        for name, track in self._tracks.items():
            self._close(track)
            chains = [c for c in track.done if c.calls >= MIN_CALLS]
            if not chains:
                continue
            longest = max(c.calls for c in chains)
            chains = [c for c in chains if c.calls == longest]
            profile = self._profiles.setdefault(name, _Profile())
            self._fold(profile, chains)
        self._tracks = {}

    def loop(self, name: str, module: nn.Module) -> CellLoop | None:
        profile = self._profiles.get(name)
        if profile is None or profile.ragged or not profile.steps:
            return None
        steps = tuple(_combined_rms(slots) for slots in profile.steps)
        known = next((kind for cls, kind in TORCH_CELLS if isinstance(module, cls)), None)
        if known is not None:
            return CellLoop(steps, known, recurrent_weights(module))
        kinds = profile.kinds
        kind = "gated" if "gated" in kinds else ("unknown" if "unknown" in kinds else "vanilla")
        return CellLoop(steps, kind, cell_state_weights(module, profile.state_columns, profile.activation))

    def layer_fields(self, name: str, module: nn.Module) -> dict[str, Any]:
        """The LayerMeasurement fields of a layer that runs as a cell in a loop ({} for any other): its
        chain profile replaces what a fused recurrent layer measures within one call."""
        loop = self.loop(name, module)
        if loop is None:
            return {}
        steps = StepSquares(loop.steps, self._profiles[name].batches)
        return {"steps": steps, "entry_steps": StepSquares(), "bidirectional": False,
                "recurrent_cell": loop.kind, "recurrent_weights": loop.weights}

    def _close(self, track: _Track) -> None:
        if track.chain is not None:
            track.done.append(track.chain)
            track.chain = None

    def _fold(self, profile: _Profile, chains: list[_Chain]) -> None:
        # One transfer for the forward: every step's (log2 scale, mean square, numel) triple.
        flat = [t for c in chains for slots in c.steps for t in slots]
        values = torch.stack(flat).cpu().tolist() if flat else []
        position = 0
        steps: list[list[tuple[float, float, float]]] = []
        for chain in chains:
            for k, slots in enumerate(chain.steps):
                if k == len(steps):
                    steps.append([])
                # A state that received no gradient at all (nothing downstream used it) counts as 0.
                triples = values[position:position + len(slots)] or [[-math.inf, 0.0, 1.0]]
                steps[k].extend((a, b, c) for a, b, c in triples)
                position += len(slots)
            profile.kinds.add("gated" if chain.around else ("vanilla" if chain.complete else "unknown"))
        if profile.batches and len(steps) != len(profile.steps):
            profile.ragged = True
            return
        if not profile.steps:
            profile.steps = steps
            profile.state_columns, profile.activation = chains[0].state_columns, chains[0].activation
        else:
            for mine, new in zip(profile.steps, steps):
                mine.extend(new)
        profile.batches += 1


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors of a call's args or output, through tuples and lists (an LSTMCell's (h, c))."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _step_hook(slots: list[torch.Tensor]) -> Any:
    def hook(g: torch.Tensor) -> None:
        slots.append(_scaled_square(g))
    return hook


def _scaled_square(g: torch.Tensor) -> torch.Tensor:
    """(log2 max |g|, mean of (g / max |g|)^2, numel) in float32, whatever g's dtype: the far
    steps of a vanishing cell hold ~1e-40, whose square is far below float32's range."""
    size = g.detach().abs()  # |g|, real also for a complex state
    if size.dtype not in (torch.float32, torch.float64):
        size = size.float()
    if size.numel() == 0:
        return torch.tensor([-math.inf, 0.0, 0.0], device=g.device)
    scale = size.amax()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    mean_square = (size / safe).pow(2).mean()
    numel = torch.tensor(float(size.numel()), device=g.device)
    return torch.stack([scale.log2().float(), mean_square.float(), numel])


def _combined_rms(triples: list[tuple[float, float, float]]) -> float:
    """RMS over every element of every state input and batch, from (log2 scale, mean square, numel),
    factoring out the largest scale so that nothing underflows."""
    finite = [(a, b, n) for a, b, n in triples if a != -math.inf and b > 0]
    total = sum(n for _, _, n in triples)
    if not finite or total <= 0:
        return 0.0
    top = max(a for a, _, _ in finite)
    mean_square = sum(n * b * 4.0 ** (a - top) for a, b, n in finite) / total
    return math.sqrt(mean_square) * 2.0 ** top


def _walk(inputs: list[torch.Tensor], prev: list[Any], earlier: list[Any]) -> _Walk:
    """Which inputs lead back to call k's output nodes (`prev`), and whether any path reaches call
    k-1's (`earlier`) without crossing them. Nodes older than the oldest target are skipped: an
    autograd node only points to nodes created before it."""
    targets = {id(n) for n in prev}
    older = {id(n) for n in earlier}
    floor = min(n._sequence_nr() for n in [*prev, *earlier])
    derived: list[torch.Tensor] = []
    around, budget = False, WALK_BUDGET
    path: tuple[tuple[Any, int], ...] = ()
    for tensor in inputs:
        start = tensor.grad_fn
        parents: dict[int, tuple[Any, int] | None] = {id(start): None}
        queue: deque[Any] = deque([start])
        found, seen = None, set()
        while queue and budget > 0:
            node = queue.popleft()
            budget -= 1
            if id(node) in targets:
                if found is None:
                    found = node
                continue
            if id(node) in older:
                around = True
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            for branch, (child, _) in enumerate(node.next_functions):
                if child is None or id(child) in parents:
                    continue
                if id(child) not in targets and id(child) not in older and child._sequence_nr() < floor:
                    continue  # created before every target: cannot lead to one
                parents[id(child)] = (node, branch)
                queue.append(child)
        if found is not None:
            derived.append(tensor)
            if not path:
                path = _path_to(found, parents)
    return _Walk(tuple(derived), around, budget > 0, path)


def _path_to(node: Any, parents: dict[int, tuple[Any, int] | None]) -> tuple[tuple[Any, int], ...]:
    steps: list[tuple[Any, int]] = [(node, -1)]
    link = parents.get(id(node))
    while link is not None:
        parent, branch = link
        steps.append((parent, branch))
        link = parents.get(id(parent))
    return tuple(reversed(steps))


# Elementwise nodes a state may pass through between the layer's output and its next input while
# the weight's columns still map one to one onto the state (no other matrix on the way).
_POINTWISE = {"Tanh", "Relu", "Sigmoid", "LeakyRelu", "Elu", "Gelu", "Silu", "Hardtanh", "Add", "Sub",
              "Mul", "Div", "Neg", "Clone", "NativeDropout", "ToCopy"}
_ACTIVATION_NODES = {"Tanh": "tanh", "Relu": "relu", "Sigmoid": "sigmoid"}
_NODE_NAME = re.compile(r"^(\w+?)Backward\d*$")


def _op(node: Any) -> str:
    """The op of an autograd node: "Tanh" for TanhBackward0."""
    match = _NODE_NAME.match(node.name())
    return match.group(1) if match else node.name()


def _state_columns(path: tuple[tuple[Any, int], ...], inputs: list[torch.Tensor]) -> str | None:
    """Which input columns of the layer's weight carry the state: "all" (the input is an elementwise
    function of the previous output), "first"/"last" (a 2-way cat([h, x]) / cat([x, h]) along the
    feature dim), None when the path does not show it."""
    if not path:
        return None
    inner = path[1:-1] if _op(path[0][0]) == "Cat" else path[:-1]
    if not all(_op(node) in _POINTWISE for node, _ in inner):
        return None
    top, branch = path[0]
    if _op(top) != "Cat":
        return "all"
    dim = getattr(top, "_saved_dim", None)
    width = len(top.next_functions)
    rank = next((t.dim() for t in inputs if t.grad_fn is top), None)
    if width != 2 or dim is None or rank is None or dim % rank != rank - 1:
        return None
    return "first" if branch == 0 else "last"


def _activation(path: tuple[tuple[Any, int], ...]) -> str | None:
    for node, _ in path:
        if _op(node) in _ACTIVATION_NODES:
            return _ACTIVATION_NODES[_op(node)]
    return None
