"""seed_all's torch half (target/isolation.py): `torch.manual_seed` exactly, without queueing
seeds for device backends that cannot start (issue 16: the scan's fixed cost on small models).

Without an accelerator, torch.manual_seed still queues a lazy seed for CUDA, XPU and MTIA, each
with a formatted stack trace, for a backend that never starts; seed_all seeds the CPU generator
alone then, with the same numbers.
"""

from __future__ import annotations

import random

import pytest
import torch

from gradcheck_cli.target import isolation
from gradcheck_cli.target.isolation import seed_all

no_accelerator = pytest.mark.skipif(torch.accelerator.is_available(), reason="a device is present")


@pytest.mark.parametrize("seed", [0, 7, 2 ** 32 + 5, 2 ** 63, -3])
def test_the_cpu_generator_draws_what_torch_manual_seed_gives(seed: int) -> None:
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        expected = (torch.initial_seed(), torch.rand(5).tolist(), torch.randint(0, 1000, (5,)).tolist())
        torch.manual_seed(seed + 1)  # something else in between
        seed_all(seed)
        assert (torch.initial_seed(), torch.rand(5).tolist(), torch.randint(0, 1000, (5,)).tolist()) == expected
    finally:
        torch.set_rng_state(saved)


@no_accelerator
def test_no_lazy_device_seed_is_queued_without_an_accelerator() -> None:
    tracker = torch.cuda._lazy_seed_tracker
    before = tracker.manual_seed_all_cb
    state, py_state = torch.get_rng_state(), random.getstate()
    try:
        seed_all(11)
    finally:
        torch.set_rng_state(state)
        random.setstate(py_state)
    assert tracker.manual_seed_all_cb is before  # torch.manual_seed would have queued a new one


def test_with_an_accelerator_torch_manual_seed_itself_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch, "manual_seed", lambda seed: calls.append(seed))
    isolation._seed_torch(5)
    assert calls == [5]
