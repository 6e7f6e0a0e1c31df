"""`gradcheck scan` under torchrun, the CLI's side: rank 0 alone prints and writes the report, every
rank exits with rank 0's code (measure/distributed_scan.py; README, "Scanning under torchrun")."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from gradcheck_cli.errors import UserError

if TYPE_CHECKING:
    from gradcheck_cli.measure.distributed_scan import ScanRanks

EXIT_USAGE = 2


def emit_on_rank_zero(ranks: ScanRanks, emit: Callable[[], int]) -> int:
    """`emit()` (render and write the report, return the exit code) on rank 0 only, since every rank
    holds the same report; every rank returns rank 0's code; the process group is destroyed if the
    scan started it."""
    code = EXIT_USAGE
    try:
        if ranks.rank == 0:
            code = emit()
    except typer.Exit as exc:  # rank 0 could not write the report: every rank exits 2
        code = exc.exit_code
    finally:
        sys.stdout.flush()  # before the other ranks exit: torchrun then stops the ones still running
        code = ranks.agree(code)
        ranks.close()
    return code


def refuse_recipe_under_torchrun() -> None:
    """`gradcheck run` is not distributed: under torchrun every rank would print its own report."""
    from gradcheck_cli.api import launched_ranks

    world = launched_ranks()
    if world is not None:
        raise UserError(f"gradcheck run (a recipe) does not run under torchrun (WORLD_SIZE={world.world_size}): "
                        "run the recipe in one process, or each scan as torchrun ... -m gradcheck_cli scan TARGET")
