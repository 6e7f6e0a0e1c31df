"""The CLI process's heap after torch is imported: out of the garbage collector's way.

Importing torch leaves some 10^5-10^6 long-lived objects (modules, functions, the operator
registry) that live until the process exits. The scan's own imports then allocate enough to trip
a full (generation-2) collection, which walks all of them: 80-110 ms of CPU, about a fifth of
the CLI's cost beyond ``import torch`` (bench/README.md, startup.py's section). ``gc.freeze()``
(the ``gc`` module's documentation) moves every object tracked at that moment to a permanent
generation that later collections ignore; objects made later (the user's model, the scan's
records) are collected as usual. What is frozen is never freed, which costs nothing in a process
that ends after its scans.

Only the ``gradcheck`` command's own process does this (`claim_process`, called by
``cli.app.main``): `gradcheck_cli.api.scan` in the user's process, or the CLI run in-process by
a test runner, leaves the collector alone.
"""

from __future__ import annotations

import gc

_state = {"owned": False, "frozen": False}


def claim_process() -> None:
    """The CLI is this process's program (its entry point calls this): it may freeze the heap."""
    _state["owned"] = True


def freeze_after_torch_import() -> None:
    """Import torch and freeze what is alive now, once per process, when the CLI owns the process;
    otherwise nothing."""
    if not _state["owned"] or _state["frozen"]:
        return
    import torch  # noqa: F401  (the scan imports it next anyway; freeze its objects with it)

    gc.freeze()
    _state["frozen"] = True
