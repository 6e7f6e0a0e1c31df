"""The Typer app: the only module that parses argv, prints, writes files or exits (with its output
half, cli_output.py and cli_progress.py, which `scan` and `run` share).

Importing this module must not import torch (`gradcheck --help` and `gradcheck list` stay fast):
everything that needs torch is imported inside the command that runs a scan.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradcheck_cli import __version__
from gradcheck_cli.cli.lazy_coercion import LazyCoercionGroup
from gradcheck_cli.cli.plot import plot_command
from gradcheck_cli.cli.process_heap import claim_process, freeze_after_torch_import
from gradcheck_cli.cli.settings import SETTINGS, Layer, Resolved
from gradcheck_cli.config import DEFAULT_FAIL_ON, OPTIMIZERS, PRECISIONS, ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.text import exception_text

if TYPE_CHECKING:
    from gradcheck_cli.cli.output import OutputOptions  # imports the renderers: loaded by the commands that report
    from gradcheck_cli.cli.recipes import RecipeScan
    from gradcheck_cli.measure.probe import StageCallback  # probe imports torch: for the type checker only

app = typer.Typer(
    name="gradcheck",
    cls=LazyCoercionGroup,  # no pydantic import for the values typer needs no adapter for
    help="Gradient diagnostics for PyTorch: which layers' gradients vanish, explode or turn NaN, "
         "why, and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
list_app = typer.Typer(help="List built-in models, finding kinds (checks), recommendation ids (fixes) "
                       "and thresholds.",
                       no_args_is_help=True, cls=LazyCoercionGroup)
app.add_typer(list_app, name="list")

EXIT_OK, EXIT_USAGE = 0, 2
_D = ScanConfig()  # the built-in defaults shown in --help (options default to None: "not given")

# The reporting options `scan` and `run` share; cli_output.emit acts on them.
FormatOption = Annotated[str, typer.Option(
    "--format", help="table, json, markdown, sarif, junit, github or html. Machine formats are alone on stdout; "
                     "github writes workflow-command annotations to stderr.")]
OutputOption = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Write the report to FILE instead of stdout ('-': stdout). A regular file is "
                           "replaced atomically; a FIFO, device or /dev/fd/N is written through.",
    dir_okay=False, show_default=False)]
BaselineOption = Annotated[Path | None, typer.Option(
    "--baseline", help="Accept the findings listed in FILE (kind + layer) and fail only on new ones.",
    dir_okay=False, show_default=False)]
WriteBaselineOption = Annotated[Path | None, typer.Option(
    "--write-baseline", help="Write every finding of this run to FILE, for a later --baseline.",
    dir_okay=False, show_default=False)]
VerifyOption = Annotated[bool | None, typer.Option(
    "--verify/--no-verify", help="Apply each recommendation to a copy of the model, probe it again with the same "
                                 "batches and seed, and report before -> after (the model itself is never "
                                 "changed). [default: off]", show_default=False)]
PrecisionOption = Annotated[str | None, typer.Option(
    "--precision", help=f"Probe under torch.autocast in this dtype: {', '.join(PRECISIONS)}; the report gets "
                        f"each layer's fp16/bf16 headroom in any of them. [default: {_D.precision}]",
    show_default=False)]
LossScaleOption = Annotated[str | None, typer.Option(
    "--loss-scale", help="Scale the loss before the probe's backward: a number S (static), or 'dynamic' "
                         "(torch.amp.GradScaler: 65536, halved on Inf/NaN gradients). [default: none]",
    show_default=False)]
ExitZeroOption = Annotated[bool, typer.Option(
    "--exit-zero", help="Exit 0 even when findings fail the gate (errors still exit 2).")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Print every stage of every scan on stderr.")]
QuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress bar and no messages on stderr, except errors.")]
NoColorOption = Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradcheck {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """gradcheck: gradient diagnostics for PyTorch models."""


@app.command()
def scan(
    target: Annotated[str, typer.Argument(help="model.py, model.py:NAME, pkg.module:attr or builtin:NAME")],
    batches: Annotated[int | None, typer.Option(
        help=f"Number of probe batches. [default: {_D.batches}]", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help=f"Samples per probe batch. [default: {_D.batch_size}]", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(
        help=f"Seed for the batches and dropout. [default: {_D.seed}]", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        help=f"cpu, cuda or cuda:N. [default: {_D.device}]", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        help=f"Optimizer steps between probe batches (weights are restored). [default: {_D.steps}]",
        show_default=False)] = None,
    optimizer: Annotated[str | None, typer.Option(
        help=f"Optimizer for --steps: {', '.join(OPTIMIZERS)}. [default: {_D.optimizer}]",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        help=f"Learning rate for --steps. [default: {_D.lr}]", show_default=False)] = None,
    input_shape: Annotated[str | None, typer.Option(
        help="Per-sample input shape when the model file has no make_batch, e.g. 3x32x32.")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        help="Load weights before the scan: a .pt/.pth state_dict (read with weights_only=True) or "
             ".safetensors file.", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Stop the scan after this many seconds (exit 2, naming the running stage); covers --verify.",
        show_default=False)] = None,
    verify: VerifyOption = None,
    precision: PrecisionOption = None,
    loss_scale: LossScaleOption = None,
    output_format: FormatOption = "table",
    output: OutputOption = None,
    fail_on: Annotated[str | None, typer.Option(
        help="Comma-separated statuses/finding kinds that make the exit code 1, 'unverified' (a "
             "recommendation --verify did not prove), or 'any'/'none'. "
             f"[default: {','.join(DEFAULT_FAIL_ON)}]", show_default=False)] = None,
    baseline: BaselineOption = None,
    write_baseline: WriteBaselineOption = None,
    exit_zero: ExitZeroOption = False,
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    no_color: NoColorOption = False,
    debug: DebugOption = False,
    show_config: Annotated[bool, typer.Option(
        "--show-config", help="Print the resolved settings and where each came from, then exit.")] = False,
    shard: Annotated[bool, typer.Option(
        "--shard", help="Under torchrun: shard the model across the ranks (FSDP2 fully_shard) for a model "
                        "that does not fit one device; the ranks probe the same batches.")] = False,
) -> None:
    """Scan a model: probe batches with hooks, classify every layer, recommend fixes.

    Settings resolve command line > [tool.gradcheck] in the nearest pyproject.toml > built-in defaults.
    Under torchrun every rank probes its own batches; rank 0 prints the report of all of them.
    """
    _ignore_warnings_for_api_users()
    try:
        from gradcheck_cli.api import launched_ranks
        from gradcheck_cli.cli.progress import ScanProgress
        from gradcheck_cli.cli.ranks import emit_on_rank_zero

        ranks = launched_ranks()
        quiet = quiet or (ranks is not None and ranks.rank > 0)  # one progress bar: rank 0's

        options = _output_options(output_format, output, baseline, write_baseline, exit_zero, quiet, no_color)
        resolved = _resolve_settings(_command_line_layer(
            batches=batches, batch_size=batch_size, seed=seed, device=device, steps=steps,
            optimizer=optimizer, lr=lr, input_shape=input_shape, fail_on=fail_on,
            checkpoint=checkpoint, timeout=timeout, verify=verify, precision=precision, loss_scale=loss_scale))
        if show_config:
            from gradcheck_cli.cli.settings import show_config_text

            typer.echo(show_config_text(f"scan {target}", resolved), nl=False)
            raise typer.Exit(EXIT_OK)
        from gradcheck_cli.api import scan as run_scan

        freeze_after_torch_import()
        with _user_code_output(quiet), ScanProgress(quiet=quiet, verbose=verbose) as progress:
            progress.start_scan(target)
            report = run_scan(target, resolved.scan_config(), resolved.thresholds(), on_stage=progress.on_stage,
                              ranks=ranks, shard=shard)
    except typer.Exit:
        raise
    except UserError as exc:
        _fail(str(exc), exc, debug)
    except KeyboardInterrupt:
        typer.echo("gradcheck: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # the user's code failed somewhere we did not anticipate
        _fail(f"scanning {target} failed: {exception_text(exc)} "
              "(run with --debug for the traceback)", exc, debug)
    results = [ScanResult(target, target, report)]
    raise typer.Exit(_emit(results, options, False, debug) if ranks is None
                     else emit_on_rank_zero(ranks, lambda: _emit(results, options, False, debug)))


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="A YAML recipe; see recipes/ and the README's Recipes section.")],
    batches: Annotated[int | None, typer.Option(
        help="Probe batches, for every scan (overrides the recipe).", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Samples per probe batch, for every scan.", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed, for every scan.", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda or cuda:N, for every scan.", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimizer steps between probe batches, for every scan.", show_default=False)] = None,
    optimizer: Annotated[str | None, typer.Option(
        help=f"Optimizer for steps ({', '.join(OPTIMIZERS)}), for every scan.", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        help="Learning rate for steps, for every scan.", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(
        help="Stop a scan after this many seconds (that scan errors, the others run), for every scan.",
        show_default=False)] = None,
    verify: VerifyOption = None,
    precision: PrecisionOption = None,
    loss_scale: LossScaleOption = None,
    output_format: FormatOption = "table",
    output: OutputOption = None,
    fail_on: Annotated[str | None, typer.Option(
        help="Comma-separated statuses/finding kinds that make the exit code 1, 'unverified' (needs "
             "--verify), or 'any'/'none', for every scan.", show_default=False)] = None,
    baseline: BaselineOption = None,
    write_baseline: WriteBaselineOption = None,
    exit_zero: ExitZeroOption = False,
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    no_color: NoColorOption = False,
    debug: DebugOption = False,
    show_config: Annotated[bool, typer.Option(
        "--show-config", help="Print every scan's resolved settings and where each came from, then exit.")]
        = False,
) -> None:
    """Run the scans a YAML recipe lists: one combined report, the exit code of the worst scan.

    Settings resolve command line > recipe scan > recipe defaults > [tool.gradcheck] in the nearest
    pyproject.toml > built-in defaults. A scan that fails (exit 2) does not stop the others.
    """
    _ignore_warnings_for_api_users()
    try:
        from gradcheck_cli.cli.progress import ScanProgress
        from gradcheck_cli.cli.ranks import refuse_recipe_under_torchrun

        refuse_recipe_under_torchrun()

        options = _output_options(output_format, output, baseline, write_baseline, exit_zero, quiet, no_color)
        plan = _recipe_plan(recipe, _command_line_layer(
            batches=batches, batch_size=batch_size, seed=seed, device=device, steps=steps,
            optimizer=optimizer, lr=lr, input_shape=None, fail_on=fail_on, timeout=timeout, verify=verify,
            precision=precision, loss_scale=loss_scale))
    except UserError as exc:
        _fail(str(exc), exc, debug)
    if show_config:
        from gradcheck_cli.cli.settings import show_config_text

        typer.echo("\n".join(show_config_text(f"scan {scan.name} ({scan.target})", settings)
                             for scan, settings in plan), nl=False)
        raise typer.Exit(EXIT_OK)
    try:
        results = []
        with _user_code_output(quiet), ScanProgress(scans=len(plan), quiet=quiet, verbose=verbose) as progress:
            for scan, settings in plan:
                progress.start_scan(scan.name)
                results.append(_run_recipe_scan(scan.name, scan.target, settings, debug, progress.on_stage))
    except KeyboardInterrupt:
        typer.echo("gradcheck: interrupted", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(_emit(results, options, True, debug))


@app.command("report")
def report_command(
    file: Annotated[Path, typer.Argument(help="A JSON report saved by `gradcheck scan --format json` or a watch, "
                                              "or a recipe run's (`gradcheck run --format json`).",
                                         dir_okay=True, show_default=False)],
    output_format: FormatOption = "table",
    output: OutputOption = None,
    fail_on: Annotated[str | None, typer.Option(
        help="Comma-separated statuses/finding kinds that make the exit code 1, or 'any'/'none'. "
             "[default: the saved report's own, else " + ",".join(DEFAULT_FAIL_ON) + "]",
        show_default=False)] = None,
    baseline: BaselineOption = None,
    exit_zero: ExitZeroOption = False,
    quiet: QuietOption = False,
    no_color: NoColorOption = False,
    debug: DebugOption = False,
) -> None:
    """Render a saved JSON report in any format, with the exit code the scan would give (no model runs)."""
    try:
        from gradcheck_cli.cli.report_file import load_report

        options = _output_options(output_format, output, baseline, None, exit_zero, quiet, no_color)
        gate = _command_line_layer(fail_on=fail_on).get("fail_on")
        results, combined = load_report(file, gate.value if gate is not None else None)
    except UserError as exc:
        _fail(str(exc), exc, debug)
    raise typer.Exit(_emit(results, options, combined, debug))


app.command("plot")(plot_command)  # cli/plot.py: a saved report's charts as images (matplotlib)


def _ignore_warnings_for_api_users() -> None:
    # torch warns at import when the optional numpy is absent; gradcheck never needs numpy, and a
    # warning on stderr would read like a problem with the user's model.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    # The notice that lazy modules stay materialised is for API users: the CLI discards the model.
    warnings.filterwarnings("ignore", message="gradcheck materialised the lazy modules")


def _recipe_plan(recipe: str, command_line: Layer) -> list[tuple[RecipeScan, Resolved]]:
    """Each scan of the recipe with its settings: command line > scan > recipe defaults > pyproject."""
    from gradcheck_cli.cli.pyproject import pyproject_layer
    from gradcheck_cli.cli.recipes import load_recipe
    from gradcheck_cli.cli.settings import resolve, unverified_gate_error

    project, _ = pyproject_layer()
    plan = [(scan, resolve(project, scan.defaults, scan.overrides, command_line))
            for scan in load_recipe(recipe).scans]
    for scan, settings in plan:
        problem = unverified_gate_error(settings)
        if problem is not None:
            raise UserError(f"scan '{scan.name}': {problem}")
    return plan


def _output_options(output_format: str, output: Path | None, baseline: Path | None,
                    write_baseline: Path | None, exit_zero: bool, quiet: bool, no_color: bool) -> OutputOptions:
    """The reporting options of `scan` and `run`; reads --baseline now, so a bad file fails fast."""
    from gradcheck_cli.cli.output import OutputOptions, load_baseline, parse_format

    return OutputOptions(fmt=parse_format(output_format), output=output, known=load_baseline(baseline),
                         write_baseline=write_baseline, exit_zero=exit_zero, quiet=quiet,
                         no_color=no_color, width=_terminal_width())


def _emit(results: list[ScanResult], options: OutputOptions, combined: bool, debug: bool) -> int:
    """cli_output.emit, with its failures (an unwritable --output, a renderer bug) as one line."""
    from gradcheck_cli.cli.output import emit

    try:
        return emit(results, options, combined=combined)
    except UserError as exc:
        _fail(str(exc), exc, debug)
    except Exception as exc:
        _fail(f"writing the report failed: {exception_text(exc)} (run with --debug for the traceback)", exc, debug)
    return EXIT_USAGE  # not reached: _fail exits


def _run_recipe_scan(name: str, target: str, settings: Resolved, debug: bool,
                     on_stage: StageCallback | None = None) -> ScanResult:
    """One scan of a recipe; its failure becomes the result's error instead of ending the run."""
    from gradcheck_cli.api import scan as run_scan

    freeze_after_torch_import()
    cause: BaseException
    try:
        return ScanResult(name, target, run_scan(target, settings.scan_config(), settings.thresholds(),
                                                 on_stage=on_stage))
    except UserError as exc:
        error, cause = str(exc), exc
    except Exception as exc:  # the user's code failed somewhere we did not anticipate
        error, cause = f"scanning {target} failed: {exception_text(exc)} (run with --debug for the traceback)", exc
    if debug:
        traceback.print_exception(cause)
    typer.echo(f"gradcheck: error: scan '{name}': {error}", err=True)
    return ScanResult(name, target, None, error)


@list_app.command("builtins")
def list_builtins() -> None:
    """The built-in demonstration models, with their documented verdicts."""
    from gradcheck_cli.target.zoo import BUILTINS

    width = max(len(b.name) for b in BUILTINS)
    for b in BUILTINS:
        typer.echo(f"builtin:{b.name:<{width}}  {b.verdict:<9}  {b.summary}")


@list_app.command("checks")
def list_checks() -> None:
    """The finding kinds (stable ids), with what each means; `gradcheck explain ID` for more."""
    from gradcheck_cli.cli.knowledge import measured_kinds
    from gradcheck_cli.report.render.explain import render_check_list

    sys.stdout.write(render_check_list(*measured_kinds()))


@list_app.command("fixes")
def list_fixes() -> None:
    """The recommendation ids, with what each changes; `gradcheck explain ID` for more."""
    from gradcheck_cli.report.render.explain import render_fix_list

    sys.stdout.write(render_fix_list())


@list_app.command("thresholds")
def list_thresholds() -> None:
    """The thresholds the analysis decides on: name, default, meaning, source; set them as thresholds.NAME."""
    from gradcheck_cli.cli.thresholds_list import render_threshold_list

    sys.stdout.write(render_threshold_list())


@app.command()
def explain(
    entry_id: Annotated[str, typer.Argument(
        metavar="ID", help="A finding kind (gradcheck list checks) or recommendation id (gradcheck list fixes).")],
) -> None:
    """Explain a finding kind or recommendation: mechanism, what is measured, thresholds, fix, references."""
    from gradcheck_cli.cli.knowledge import get, measured_kinds
    from gradcheck_cli.report.render.explain import render_explain

    try:
        entry = get(entry_id)
    except UserError as exc:
        _fail(str(exc), exc, debug=False)
    sys.stdout.write(render_explain(entry, *measured_kinds(), width=min(_terminal_width(), 100)))


def _command_line_layer(**given: Any) -> Layer:
    """The options given on the command line (None: not given), validated like recipe keys."""
    from gradcheck_cli.cli.settings import SettingError, Sourced, parse_option

    keys = {"optimizer": "optimizer.name", "lr": "optimizer.lr"}
    layer: Layer = {}
    for name, value in given.items():
        if value is None:
            continue
        key = keys.get(name, name)
        if key == "input_shape":
            from gradcheck_cli.target.batches import parse_input_shape  # the command line's own '3x32x32' syntax

            value = parse_input_shape(value)
        try:
            layer[key] = Sourced(parse_option(key, value), f"command line ({SETTINGS[key].option})")
        except SettingError as exc:
            raise UserError(exc.message) from None
    return layer


def _resolve_settings(command_line: Layer) -> Resolved:
    """`gradcheck scan`: command line > nearest pyproject.toml [tool.gradcheck] > built-in defaults."""
    from gradcheck_cli.cli.pyproject import pyproject_layer
    from gradcheck_cli.cli.settings import resolve, unverified_gate_error

    project, _ = pyproject_layer()
    resolved = resolve(project, command_line)
    problem = unverified_gate_error(resolved)
    if problem is not None:
        raise UserError(problem)
    return resolved


def _user_code_output(quiet: bool) -> AbstractContextManager[None]:
    """While the scans run the user's code, stdout is kept for the report (isolation.py): what the
    code prints goes to stderr, a leftover breakpoint() is skipped with a warning (not with -q)."""
    from gradcheck_cli.target.isolation import user_output_to_stderr

    def warn(message: str) -> None:
        if not quiet:
            typer.echo(f"gradcheck: warning: {message}", err=True)

    return user_output_to_stderr(warn)


def _terminal_width() -> int:
    import shutil

    columns = os.environ.get("COLUMNS")
    if columns and columns.isdigit():
        return int(columns)
    return shutil.get_terminal_size((100, 24)).columns if sys.stdout.isatty() else 100


def _fail(message: str, exc: BaseException, debug: bool) -> Any:
    if debug:
        traceback.print_exception(exc)
    typer.echo(f"gradcheck: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def main() -> None:
    claim_process()  # the gradcheck command's own process: the heap may be frozen after torch's import
    app()
