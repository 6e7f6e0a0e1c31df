"""The Typer app: the only module that parses argv, prints, writes files or exits.

Importing this module must not import torch (`gradcheck --help` and `gradcheck list` stay fast):
everything that needs torch is imported inside the command that runs a scan.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Annotated, Any

import typer

from . import __version__
from .config import DEFAULT_FAIL_ON, OPTIMIZERS, ScanConfig
from .errors import UserError
from .gate import fails, parse_fail_on
from .text import exception_text

app = typer.Typer(
    name="gradcheck",
    help="Gradient diagnostics for PyTorch: which layers' gradients vanish, explode or turn NaN, "
         "why, and what to change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
list_app = typer.Typer(help="List built-in models.", no_args_is_help=True)
app.add_typer(list_app, name="list")

FORMATS = ("table", "json")
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


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
    batches: Annotated[int, typer.Option(help="Number of probe batches.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Samples per probe batch.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed for the batches and dropout.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    steps: Annotated[int, typer.Option(help="Optimizer steps between probe batches (weights are restored).")] = 0,
    optimizer: Annotated[str, typer.Option(help=f"Optimizer for --steps: {', '.join(OPTIMIZERS)}.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Learning rate for --steps.")] = 0.01,
    input_shape: Annotated[str | None, typer.Option(
        help="Per-sample input shape when the model file has no make_batch, e.g. 3x32x32.")] = None,
    output_format: Annotated[str, typer.Option(
        "--format", help="table or json (json: stdout holds only the JSON).")] = "table",
    fail_on: Annotated[str, typer.Option(
        help="Comma-separated statuses/finding kinds that make the exit code 1, or 'any'/'none'.")]
        = ",".join(DEFAULT_FAIL_ON),
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour (NO_COLOR is honoured too).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    """Scan a model: probe batches with hooks, classify every layer, recommend fixes."""
    # torch warns at import when the optional numpy is absent; gradcheck never needs numpy, and a
    # warning on stderr would read like a problem with the user's model.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    try:
        fmt = _choice(output_format, FORMATS, "--format")
        fail_words = _parse_fail_on(fail_on)
        from .batches import parse_input_shape

        config = ScanConfig(
            batches=batches, batch_size=batch_size, seed=seed, device=device, steps=steps,
            optimizer=optimizer.lower(), lr=lr,
            input_shape=parse_input_shape(input_shape) if input_shape else None,
            fail_on=fail_words,
        )
        from .api import scan as run_scan

        report = run_scan(target, config)
    except UserError as exc:
        _fail(str(exc), exc, debug)
    except KeyboardInterrupt:
        typer.echo("gradcheck: interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # the user's code failed somewhere we did not anticipate
        _fail(f"scanning {target} failed: {exception_text(exc)} "
              "(run with --debug for the traceback)", exc, debug)

    from .render import OutputFormat, render

    if fmt == "json":
        sys.stdout.write(render(report, OutputFormat.JSON))
    else:
        color = _use_color(no_color)
        width = _terminal_width()
        sys.stdout.write(render(report, OutputFormat.TABLE, width=width, color=color))
    raise typer.Exit(EXIT_FINDINGS if fails(report) else EXIT_OK)


@list_app.command("builtins")
def list_builtins() -> None:
    """The built-in demonstration models, with their documented verdicts."""
    from .zoo import BUILTINS

    width = max(len(b.name) for b in BUILTINS)
    for b in BUILTINS:
        typer.echo(f"builtin:{b.name:<{width}}  {b.verdict:<9}  {b.summary}")


def _parse_fail_on(text: str) -> tuple[str, ...]:
    try:
        return parse_fail_on(text.split(","))
    except ValueError as exc:
        raise UserError(f"--fail-on: {exc}") from None


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value.lower() not in choices:
        raise UserError(f"invalid {option} '{value}'; choose one of: {', '.join(choices)}")
    return value.lower()


def _use_color(no_color: bool) -> bool:
    if no_color or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


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
    app()
