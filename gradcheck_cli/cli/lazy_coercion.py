"""Typer's option coercion without importing pydantic when the answer is already known.

Typer 0.2x coerces every parameter's value through a pydantic ``TypeAdapter`` that it builds on the
parameter's first use, even when the value is ``None`` (an option not given) or a string for a
``str`` option. Importing pydantic and building the ~20 adapters of ``gradcheck scan`` costs about
0.15 s of CPU on every invocation (bench/README.md, startup.py's section), which is most of the
CLI's own start-up beyond torch.

`LazyCoercionGroup` (the app's group class) gives every parameter a `_Deferred` coercion: the
adapter is built only for a value whose result is not certain without it. A missing value never
needs it (typer's ``RuntimeParam.coerce`` answers ``None``/``()`` itself), nor do these:

* a ``str`` for a plain ``str`` parameter (typer's adapter: ``str(value)``, then pydantic's ``str``);
* an ``int`` for a plain ``int`` parameter and a decimal integer string of at most 18 digits;
* a ``float`` for a plain ``float`` parameter and a plain decimal number string.

Everything else (a path, a choice, a parser, a bound, an unusual number such as ``1_000`` or
``inf``, an invalid value) goes to typer's own coercion, built on first need, so results and error
messages are typer's. With a typer that has no such coercion layer (older versions parse through
click types) the group is plain ``TyperGroup``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from typer._click import Context
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer.core import _TyperParameter

try:  # typer >= 0.2x: coercion through pydantic adapters, built by build_runtime_param
    from typer._coercion import RuntimeParam, TypeDescriptor, build_runtime_param
except ImportError:  # pragma: no cover - older typer: click types, no pydantic
    RuntimeParam = None  # type: ignore[assignment,misc]

_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def known_result(annotation: Any, value: Any, plain: bool) -> tuple[bool, Any]:
    """(True, result) when typer's adapter for `annotation` certainly returns `result` for `value`;
    (False, None) when only the adapter can tell. `plain`: the parameter has no parser, bounds,
    choices or file/path handling."""
    if not plain:
        return False, None
    if annotation is str and type(value) is str:
        return True, value
    if annotation is int and (type(value) is int or (type(value) is str and _INT.fullmatch(value))):
        return True, int(value)
    if annotation is float and (type(value) is float or (type(value) is str and _FLOAT.fullmatch(value))):
        return True, float(value)
    return False, None


def _plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    return (descriptor.file_annotation is None and getattr(info, "parser", None) is None
            and getattr(info, "min", None) is None and getattr(info, "max", None) is None
            and not getattr(info, "clamp", False) and not descriptor.is_choice and not descriptor.is_path)


def _layout_known() -> bool:
    """typer's private coercion layer has the shape this module was written against (typer 0.29):
    a frozen dataclass with exactly these fields. Any other typer: no shortcut, typer's own path."""
    from dataclasses import fields, is_dataclass

    try:
        names = {f.name for f in fields(RuntimeParam)} if is_dataclass(RuntimeParam) else None
    except TypeError:  # pragma: no cover - not a dataclass after all
        return False
    return names == {"parameter_info", "annotation"} and callable(getattr(RuntimeParam, "_coerce_value", None))


if RuntimeParam is not None and not _layout_known():  # pragma: no cover - another typer's internals
    RuntimeParam = None  # type: ignore[assignment,misc]

if RuntimeParam is not None:
    @dataclass(frozen=True)
    class _Deferred(RuntimeParam):
        """A parameter's coercion: the known results directly, anything else through typer's own
        (built once, on first need, and kept on the parameter)."""

        descriptor: TypeDescriptor
        plain: bool

        def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
            known, result = known_result(self.annotation, value, self.plain)
            if known:
                return result
            real = build_runtime_param(self.descriptor)
            param._runtime_param = real
            return real._coerce_value(value, param=param, ctx=ctx)


def _defer(param: Any) -> None:
    """Give one typer parameter a `_Deferred` coercion (a click parameter or one already coerced
    is left alone)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None and getattr(param, "_runtime_param", "absent") is None:
        param._runtime_param = _Deferred(parameter_info=descriptor.parameter_info,
                                         annotation=descriptor.annotation,
                                         descriptor=descriptor, plain=_plain(descriptor))


def defer_coercion(command: Any) -> None:
    """Give `command`'s parameters (and its subcommands', recursively) a `_Deferred` coercion."""
    if RuntimeParam is None:
        return
    for param in getattr(command, "params", ()):
        _defer(param)
    for sub in getattr(command, "commands", {}).values():
        defer_coercion(sub)


class LazyCoercionGroup(TyperGroup):
    """The app's group: its commands' parameters coerce without pydantic where the result is known.

    The `--help` option is made per command when a context first asks for it (and kept), so it is
    deferred then: the group's own here, a subcommand's when the group resolves it (with the
    group's context, whose help option names the subcommand's context inherits)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defer_coercion(self)

    def get_help_option(self, ctx: Context) -> Any:
        option = super().get_help_option(ctx)
        if RuntimeParam is not None and option is not None:
            _defer(option)
        return option

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        own_names = command is not None and "help_option_names" in (command.context_settings or {})
        if RuntimeParam is not None and command is not None and not own_names:
            option = command.get_help_option(ctx)
            if option is not None:
                _defer(option)
        return name, command, rest
