"""L2 norms of tensors of any dtype, layout and magnitude, as float64 tensors on their device.

The probe's statistics are sums of squares. Taken in float32 they leave the range at both ends:
a square overflows above ~1.8e19 (so a layer whose gradients are finite but around 1e20 read as
Infinity, and was called NaN/Inf) and underflows below ~1e-19 (a vanishing gradient reads as
exactly 0). And `vector_norm(x, dtype=float32)` refuses a float64 tensor (no narrowing), a complex
one, and a sparse one (`nn.Embedding(sparse=True)`).

* fast path: one native reduction, accumulated in float32 for float16/bfloat16/float32 (the
  tensor's own dtype for float64 and complex: a complex tensor's norm is the norm of |z|). It is
  trusted when the norm lies in [FLOOR, CEIL] of its accumulation dtype: there no square of an
  element that matters, and not their sum, can leave the normal range (float32: a norm <= 1e18
  keeps the sum of squares <= 1e36 < 3.4e38; a norm >= 1e-12 over at most 2^31 elements has a
  largest |x| >= 2e-17, whose square is normal, and the elements below 1e-19 whose squares
  underflow add < 2e-5 of it).
* scaled path, otherwise: ||x|| = m * ||x / m|| with m = max |x| (LAPACK's xNRM2 idea): every
  element of x / m is <= 1, so nothing overflows, and the largest square is exactly 1. NaN/Inf
  elements make m NaN/Inf and the norm non-finite, as they should.
* sparse tensors: the norm of the coalesced values (duplicate indices summed first).

The result is float64, so the sums of squares over tensors, layers and batches cannot overflow
either (that needs a norm above 1e154). On the CPU a read-back costs nothing, so the scaled path
runs only where the fast one is not trusted; on an accelerator a read-back per tensor would stall
the queue (one per hooked tensor), so the scaled path is taken there always: the same numbers,
three passes instead of one, and no host sync.

`DeferredSquares` takes the norms of the tensors a session's hooks see (layer outputs, the
gradients arriving at them) without reading anything back in the hook: on the CPU the fast norm is
taken at once (a later in-place op, nn.ReLU(inplace=True), must not change what was measured) and
the decision to trust it is read for all of them together when they are flushed (once per forward
and once per batch), so that the number of reads does not grow with the number of layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gradcheck_cli.measure.distributed import local_tensor

_FAST_RANGE = {torch.float32: (1e-12, 1e18), torch.float64: (1e-140, 1e140)}
"""[FLOOR, CEIL] of a trusted fast norm, by the dtype it was accumulated in (module docstring)."""


def tensor_norm(t: torch.Tensor) -> torch.Tensor:
    """||t||_2 as a 0-dim float64 tensor on t's device, accurate at any finite magnitude."""
    values = _dense_values(t.detach())
    if values.device.type != "cpu" or values.numel() == 0:
        return _scaled_norm(values)
    fast = torch.linalg.vector_norm(values, dtype=_accumulation(values))
    if _trusted(float(fast), fast.dtype):
        return fast.double()
    return _scaled_norm(values)


def squared_norms(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """||t||^2 of each tensor, as one float64 vector on `device` (one host sync in all).

    The fast path runs as one fused call per accumulation dtype (torch._foreach_norm, as cheap as
    before for models with thousands of parameter tensors); only the tensors whose fast norm is
    not trusted are recomputed with the scaled path.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64, device=device)
    values = [_dense_values(t.detach()) for t in tensors]
    groups: dict[torch.dtype, list[int]] = {}
    for k, v in enumerate(values):
        groups.setdefault(_accumulation(v), []).append(k)
    result = torch.zeros(len(tensors), dtype=torch.float64, device=device)
    low, high = [0.0] * len(tensors), [0.0] * len(tensors)
    for acc, indices in groups.items():
        norms = torch._foreach_norm([values[k] for k in indices], 2,
                                    dtype=None if acc.is_complex else acc)
        result[indices] = torch.stack([n.to(device, torch.float64) for n in norms])
        for k in indices:
            low[k], high[k] = _FAST_RANGE[_real_dtype(acc)]
    trusted = (result >= torch.tensor(low, dtype=torch.float64, device=device)) & (
        result <= torch.tensor(high, dtype=torch.float64, device=device))
    # A fast norm of 0 is recomputed too: its squares may all have underflowed (1e-25 is not 0).
    untrusted = (~trusted).nonzero().flatten().tolist()
    for k, norm in zip(untrusted, _scaled_norms([values[k] for k in untrusted])):
        result[k] = norm.to(device)
    return result.square()


@dataclass
class _Pending:
    norm: torch.Tensor | None
    """CPU: the fast norm (its accumulation dtype), to be trusted or not at the flush (None: taken
    at the flush, for a tensor nothing modifies); elsewhere the scaled norm (float64), final."""
    values: torch.Tensor | None
    """CPU: the tensor itself, for the scaled path if the fast norm is not trusted."""
    targets: list[list[torch.Tensor]] = field(default_factory=list)
    square: torch.Tensor | None = None
    """The squared norm, once flushed."""


FLUSH_ELEMENTS = 1 << 24
"""Elements held for a possible scaled norm before the pending norms are flushed early (64 MiB of
float32): holding tensors keeps them alive, and the flush bounds what that costs in memory."""


class DeferredSquares:
    """Squared norms taken in hooks and delivered together (module docstring): `add(t, *targets)`
    appends ||t||^2 (a 0-dim float64 tensor, the same number tensor_norm(t).square() gives) to each
    target list when `flush()` runs; one host read per flush, none off the CPU."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._elements = 0

    def add(self, t: torch.Tensor, *targets: list[torch.Tensor], unchanging: bool = False) -> _Pending:
        """Queue ||t||^2 for `targets`. `unchanging`: nothing modifies t in place before the flush
        (a gradient handed to a tensor hook; holding it keeps autograd from reusing its buffer),
        so on the CPU even its fast norm waits for the flush, where one foreach call takes them all."""
        values = _dense_values(t.detach())
        if values.device.type != "cpu" or values.numel() == 0:
            entry = _Pending(_scaled_norm(values), None, list(targets))
        else:
            later = unchanging and not values.is_complex()
            fast = None if later else torch.linalg.vector_norm(values, dtype=_accumulation(values))
            entry = _Pending(fast, values, list(targets))
            self._elements += values.numel()
        self._pending.append(entry)
        if self._elements > FLUSH_ELEMENTS:
            self.flush()
        return entry

    @staticmethod
    def extend(entry: _Pending, *targets: list[torch.Tensor]) -> None:
        """The square of an entry added before goes to these lists too (a container returning its
        child's output: the child measured it already)."""
        if entry.square is None:
            entry.targets.extend(targets)
            return
        for target in targets:
            target.append(entry.square)

    def flush(self) -> None:
        pending, self._pending, self._elements = self._pending, [], 0
        on_cpu = [entry for entry in pending if entry.values is not None]
        if on_cpu:
            _fast_norms([entry for entry in on_cpu if entry.norm is None])
            _trust_or_rescale(on_cpu)
        by_device: dict[torch.device, list[tuple[_Pending, torch.Tensor]]] = {}
        for entry in pending:
            if entry.norm is not None:  # every entry has its norm by now
                by_device.setdefault(entry.norm.device, []).append((entry, entry.norm))
        for group in by_device.values():
            squares = torch.stack([norm for _, norm in group]).to(torch.float64).square().unbind()
            for (entry, _), sq in zip(group, squares):
                entry.square = sq
                for target in entry.targets:
                    target.append(sq)


def _fast_norms(pending: list[_Pending]) -> None:
    """The fast norms of entries queued without one, one foreach call per accumulation dtype (on
    the CPU the same kernel per tensor as vector_norm, so the same numbers)."""
    groups: dict[torch.dtype, list[_Pending]] = {}
    for entry in pending:
        if entry.values is not None:
            groups.setdefault(_accumulation(entry.values), []).append(entry)
    for acc, entries in groups.items():
        norms = torch._foreach_norm([entry.values for entry in entries if entry.values is not None], 2,
                                    dtype=acc)
        for entry, norm in zip(entries, norms):
            entry.norm = norm


def _trust_or_rescale(pending: list[_Pending]) -> None:
    """Replace each fast norm that is not trusted by the scaled one (one host read for all)."""
    norms = [entry.norm for entry in pending if entry.norm is not None]  # every one has its norm now
    fast = torch.stack(norms).to(torch.float64)
    ranges = [_FAST_RANGE[_real_dtype(norm.dtype)] for norm in norms]
    low = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
    high = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
    untrusted = ((fast < low) | (fast > high) | fast.isnan()).nonzero().flatten().tolist()
    # Known limit: if an in-place op changed a tensor since its hook (nn.ReLU(inplace=True) after
    # a layer whose output norm lies outside [1e-12, 1e18]), these are its new values.
    tensors = [pending[k].values for k in untrusted]  # every entry here is a CPU one: it has its values
    scaled = _scaled_norms([t for t in tensors if t is not None])
    for k, norm in zip(untrusted, scaled):
        pending[k].norm = norm
    for entry in pending:
        entry.values = None


def count_nonfinite(t: torch.Tensor) -> int:
    """Elements of t that are NaN or +-Inf (of the stored values, for a sparse tensor)."""
    values = _dense_values(t.detach())
    return int((~torch.isfinite(values)).sum().item())


def _scaled_norm(values: torch.Tensor) -> torch.Tensor:
    if values.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=values.device)
    peak = torch.linalg.vector_norm(values, ord=math.inf)
    scale = torch.where(torch.isfinite(peak) & (peak > 0), peak, torch.ones_like(peak))
    unit = torch.linalg.vector_norm(values / scale.to(values.dtype if not values.is_complex()
                                                      else _real_dtype(values.dtype)),
                                    dtype=_accumulation(values))
    return unit.double() * scale.double()


def _scaled_norms(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """_scaled_norm of each tensor, the same numbers: on the CPU, real tensors go through grouped
    foreach calls (a vanishing model's gradients may all need the scaled path: thousands of
    tensors, six Python-level ops each otherwise)."""
    result: list[torch.Tensor | None] = [None] * len(values)
    groups: dict[torch.dtype, list[int]] = {}
    for k, v in enumerate(values):
        if v.device.type != "cpu" or v.is_complex() or v.numel() == 0:
            result[k] = _scaled_norm(v)
        else:
            groups.setdefault(v.dtype, []).append(k)
    for indices in groups.values():
        group = [values[k] for k in indices]
        peaks = torch.stack(torch._foreach_norm(group, math.inf))
        scales = torch.where(torch.isfinite(peaks) & (peaks > 0), peaks, torch.ones_like(peaks))
        units = torch._foreach_norm(torch._foreach_div(group, list(scales.unbind())), 2,
                                    dtype=_accumulation(group[0]))
        norms = torch.stack(units).double() * scales.double()
        for k, norm in zip(indices, norms.unbind()):
            result[k] = norm
    return [norm for norm in result if norm is not None]


def _dense_values(t: torch.Tensor) -> torch.Tensor:
    t = local_tensor(t)  # FSDP2's DTensor: this rank's shard (sums of squares add across ranks)
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    if t.layout != torch.strided:  # CSR/CSC/BSR: rare enough to densify
        return t.to_dense()
    return t


def _accumulation(t: torch.Tensor) -> torch.dtype:
    """float32 for float16/bfloat16/float32; the tensor's own dtype for 64-bit and complex ones
    (vector_norm's dtype must be complex for a complex input; complex32 widens to complex64)."""
    if t.is_complex():
        return torch.complex64 if t.dtype == torch.complex32 else t.dtype
    return torch.float64 if t.dtype == torch.float64 else torch.float32


_REAL = {torch.complex32: torch.float16, torch.complex64: torch.float32, torch.complex128: torch.float64}


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return _REAL.get(dtype, dtype)


def _trusted(norm: float, acc: torch.dtype) -> bool:
    low, high = _FAST_RANGE[_real_dtype(acc)]
    return low <= norm <= high
