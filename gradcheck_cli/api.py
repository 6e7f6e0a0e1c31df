"""The scan: load the target -> measure it (measure/) -> analyse the measurements (analyse/) -> Report."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import Report
from gradcheck_cli.target.resolve import Target, resolve_target

if TYPE_CHECKING:
    from gradcheck_cli.cli.watch import Watch
    from gradcheck_cli.measure.distributed_scan import ScanRanks
    from gradcheck_cli.measure.probe import StageCallback


def scan(target: str | Target, config: ScanConfig | None = None,
         thresholds: Thresholds | None = None, on_stage: StageCallback | None = None,
         ranks: ScanRanks | None = None, **options: Any) -> Report:
    """Scan a model and return its Report; the model comes back exactly as it was.

    `target` is a TARGET string (model.py, model.py:NAME, pkg.module:attr, builtin:NAME) or a
    Target; `options` override fields of ScanConfig (batches=5, device="cuda", ...). `on_stage`
    is told each stage as it starts (see probe.StageCallback). `config.timeout` and running out of
    memory end the scan with a UserError naming the stage (guards.py).

    The user's code runs seeded with `config.seed` (torch, random, numpy; isolation.py), and the
    process comes back as it was: RNG states, default dtype, grad mode, working directory. A
    SystemExit (or other BaseException but KeyboardInterrupt) from the user's code is a UserError.

    Under torchrun (WORLD_SIZE > 1) every rank probes batches of its own and gets the report of
    all of them (measure/distributed_scan.py); `ranks` is the caller's ScanRanks, whose process
    group the caller closes (the CLI agrees on the exit code first), else the scan makes its own.
    """
    from gradcheck_cli.target.guards import (
        ScanTimeout,
        StageClock,
        is_out_of_memory,
        out_of_memory_error,
        time_limit,
        timeout_error,
    )
    from gradcheck_cli.target.isolation import is_exit_from_user_code, isolated_scan, user_exit_error

    config = replace(config or ScanConfig(), **options)
    own_ranks = ranks is None
    ranks = launched_ranks() if ranks is None else ranks
    if ranks is not None:
        config = _rank_config(config, ranks)
    elif config.shard:
        raise UserError("--shard shards the model across the ranks of torchrun, and this process is alone "
                        "(WORLD_SIZE is unset or 1): run it as torchrun --nproc_per_node N -m gradcheck_cli scan ...")
    _validate(config)
    name = target if isinstance(target, str) else target.name
    # The clock names the running stage for a --timeout or an out-of-memory message.
    clock = StageClock(config.timeout, on_stage)
    try:
        with isolated_scan(config.seed), time_limit(clock), ExitStack() as scan_context:
            if ranks is not None:  # the CLI's group outlives a scan that reports (the ranks agree on
                # its exit code first, cli/ranks.py); a scan that fails, or the API's own, ends it here
                scan_context.push(lambda failed, *_: None if failed is None and not own_ranks else ranks.close())
            return _scan(target, config, thresholds or Thresholds(), clock, scan_context, ranks)
    except ScanTimeout as exc:
        raise timeout_error(name, config.timeout or 0.0, exc.where) from None
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, UserError) else exc  # user code errors arrive wrapped
        if cause is not None and is_out_of_memory(cause):
            raise out_of_memory_error(cause, name, clock.where, config.batch_size) from exc
        raise
    except BaseException as exc:  # sys.exit() in a forward or loss_fn is no verdict: exit 2, not 0 or 1
        if not is_exit_from_user_code(exc):
            raise
        raise user_exit_error(exc, name, clock.where) from exc


def watch(model: Any, optimizer: Any = None, *, every: int = 50, sample_every: int = 0,
          output: Any = "gradcheck-watch.json", quiet: bool = False, fail_on: Any = None,
          thresholds: Thresholds | None = None, scaler: Any = None) -> Watch:
    """Watch the user's own training loop: `with watch(model, optimizer) as w: ... w.step(loss)`
    once per optimizer step; leaving the block writes `output` (JSON) and prints the table to
    stderr unless `quiet` (gradcheck_cli/cli/watch.py; README, "Watching training"). `scaler`:
    the loop's torch.amp.GradScaler under fp16 mixed precision (measure/watch_scaler.py)."""
    from gradcheck_cli.cli.watch import watch as _watch

    return _watch(model, optimizer, every=every, sample_every=sample_every, output=output, quiet=quiet,
                  fail_on=fail_on, thresholds=thresholds, scaler=scaler)


def _scan(target: str | Target, config: ScanConfig, thresholds: Thresholds, stage: StageCallback,
          scan_context: ExitStack, ranks: ScanRanks | None = None) -> Report:
    import torch

    from gradcheck_cli.analyse.pipeline import analyse
    from gradcheck_cli.measure.probe import run_probe
    from gradcheck_cli.target.batches import synthetic_batch_maker
    from gradcheck_cli.target.guards import recursion_room
    from gradcheck_cli.target.isolation import fresh_start
    from gradcheck_cli.target.scannable import check_scannable, unwrap_model

    stage("loading the target", 0, config.batches)
    # A bad checkpoint stops the scan before the user's model code runs.
    checkpoint = _read_checkpoint(config.checkpoint) if config.checkpoint else None
    resolved = resolve_target(target) if isinstance(target, str) else target
    stage("building the model", 0, config.batches)
    fresh_start(config.seed)  # the model's init does not depend on what its import drew or switched off
    model = unwrap_model(resolved.build_model())  # torch.compile / DataParallel / DDP: the module inside
    scan_context.enter_context(recursion_room(model))  # torch's module traversals recurse per level
    check_scannable(model, resolved.name)
    if checkpoint is not None and config.checkpoint:
        from gradcheck_cli.target.checkpoint import apply_state_dict

        apply_state_dict(model, checkpoint, config.checkpoint)
    make_batch = resolved.make_batch or synthetic_batch_maker(model, config.input_shape, source=resolved.name)
    torch.set_grad_enabled(True)  # build_model may have switched it off: the probe needs it
    if ranks is None:
        measurements = run_probe(model, make_batch, resolved.loss_fn, config, stage)
    else:  # under torchrun: every rank its own batches, merged (measure/distributed_scan.py)
        ranks.join(config.device)
        measurements = ranks.probe_model(model, lambda rank_config: run_probe(
            model, make_batch, resolved.loss_fn, rank_config, stage), config)
    stage("analysing the measurements", 0, config.batches)
    report = analyse(measurements, config, thresholds, target=resolved.name)
    if not config.verify:
        return report
    from gradcheck_cli.verify.copy import ModelCopier
    from gradcheck_cli.verify.run import verify_report

    # Every patch goes to a copy of the model as built (and loaded), never to the model itself.
    copier = ModelCopier(model, resolved.build_model, config.seed,
                         (checkpoint, config.checkpoint) if checkpoint is not None and config.checkpoint else None)
    return verify_report(report, measurements, copier, make_batch, resolved.loss_fn, config, thresholds, stage)


def _read_checkpoint(path: str) -> Any:
    """The --checkpoint file's state dict (target/checkpoint.py, imported only for a scan that has one)."""
    from gradcheck_cli.target.checkpoint import read_checkpoint

    return read_checkpoint(path)


def launched_ranks() -> ScanRanks | None:
    """This process's place under torchrun (WORLD_SIZE > 1 in the environment), else None; a
    UserError for an environment that makes no sense (RANK outside WORLD_SIZE). The CLI's too."""
    import os

    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        return None  # a single process does not import torch.distributed
    from gradcheck_cli.measure.distributed_scan import ScanRanks

    return ScanRanks.from_environment()


def _rank_config(config: ScanConfig, ranks: ScanRanks) -> ScanConfig:
    """The config of one rank of a scan under torchrun: its own device, and the number of ranks
    for the report; --verify and --steps are refused (their probes are not data-parallel)."""
    refused = {"--verify": config.verify, "--steps": config.steps > 0}
    for option in (option for option, given in refused.items() if given):
        raise UserError(f"{option} is not supported under torchrun (WORLD_SIZE={ranks.world_size}): each rank "
                        f"would measure it alone; run the scan with {option} in one process")
    if config.shard and config.precision != "fp32":
        raise UserError(f"--shard measures in fp32 only: --precision {config.precision} needs a scan without --shard")
    return replace(config, device=ranks.device(config.device), ranks=ranks.world_size)


def _validate(config: ScanConfig) -> None:
    from gradcheck_cli.config import OPTIMIZERS

    if config.batches < 1:
        raise UserError(f"--batches must be at least 1 (got {config.batches})")
    if config.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {config.batch_size})")
    if config.steps < 0:
        raise UserError(f"--steps must be 0 or more (got {config.steps})")
    if config.steps > 0 and config.batches < 2:
        # Steps are taken between probe batches; with one batch they would silently never happen.
        raise UserError(f"--steps {config.steps} needs at least 2 --batches (the steps are taken between "
                        f"probe batches); use --batches 2 or more")
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown --optimizer '{config.optimizer}'; use one of {', '.join(OPTIMIZERS)}")
    if not config.lr > 0:
        raise UserError(f"--lr must be positive (got {config.lr})")
    if config.timeout is not None and not config.timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds (got {config.timeout})")
    _validate_device(config.device)
    _validate_precision(config)


def _validate_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"invalid --device '{device}': use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices are visible")


def _validate_precision(config: ScanConfig) -> None:
    """--precision one of PRECISIONS that the device's autocast supports; --loss-scale a positive
    finite number or "dynamic" (measure/precision.py)."""
    import math

    import torch

    from gradcheck_cli.config import PRECISIONS
    from gradcheck_cli.measure.precision import unsupported_precision

    if config.precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{config.precision}'; use one of {', '.join(PRECISIONS)}")
    scale = config.loss_scale
    if scale is not None and scale != "dynamic" and (
            isinstance(scale, (str, bool)) or not math.isfinite(scale) or not scale > 0):
        raise UserError(f"--loss-scale must be a positive number or 'dynamic' (got {scale})")
    reason = unsupported_precision(torch.device(config.device), config.precision)
    if reason is not None:
        raise UserError(f"--precision {config.precision} on --device {config.device}: {reason}; "
                        "use --precision fp32")
