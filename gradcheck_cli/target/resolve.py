"""TARGET string -> Target: a model file, `file.py:NAME`, `pkg.module:attr` or `builtin:NAME`.

`resolve_target` is the entry point; the loader functions live below the Target record.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import traceback
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from gradcheck_cli.errors import UserError
from gradcheck_cli.target.isolation import exit_fix, is_user_code_failure, script_argv
from gradcheck_cli.text import exception_text as _exc_text
from gradcheck_cli.text import with_article as _a


@dataclass(frozen=True)
class Target:
    """What gradcheck needs to probe a model; built without running the model."""

    name: str
    """The target as the user wrote it (shown in the report)."""
    build_model: Callable[[], Any]
    """Returns the nn.Module to scan (may be the user's own module-level instance)."""
    make_batch: Callable[[int], Any] | None = None
    """batch_size -> inputs or (inputs, target); inputs: tensor, tuple (positional), dict (kwargs)."""
    loss_fn: Callable[[Any, Any], Any] | None = None
    """(output, target) -> scalar tensor; None means the default loss rules of DESIGN.md."""


# --------------------------------------------------------------------------------------------------
# Loading: TARGET string -> Target
# --------------------------------------------------------------------------------------------------


_FORMS = ("a model file (model.py or model.py:NAME), an importable module attribute "
          "(pkg.module:attr) or a built-in model (builtin:NAME; see `gradcheck list builtins`)")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")  # \Z: "$" would accept a final newline
_LOOKED_FOR = ("build_model(), get_model(), a module-level nn.Module instance `model`, or a "
               "single nn.Module subclass defined in the file that constructs without arguments")
_counter = itertools.count()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # gradcheck_cli/


def resolve_target(spec: str) -> Target:
    """Turn the TARGET string of the command line into a Target (the model is not built yet).

    Accepted forms: ``builtin:NAME``, ``path/to/model.py``, ``path/to/model.py:NAME`` and
    ``pkg.module:attr``. Every mistake raises a one-line UserError.
    """
    spec = spec.strip()
    if not spec:
        raise UserError(f"no target given: pass {_FORMS}")
    # A newline or other control character would break the one-line message (and is never part
    # of a path a user meant to type); repr() shows it.
    control = next((c for c in spec if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if control is not None:
        raise UserError(f"target {spec[:200]!r} contains the control character {control!r}; "
                        f"pass {_FORMS}")
    if spec.startswith("builtin:"):
        builtin = spec[len("builtin:"):].strip()
        if not builtin:
            raise UserError("'builtin:' needs a model name, e.g. builtin:NAME; "
                            "see `gradcheck list builtins`")
        from gradcheck_cli.target import zoo  # lazy: the zoo builds torch models

        return zoo.load_target(builtin)
    path, name = _split_file_spec(spec)
    if path is not None:
        return _load_file_target(spec, path, name)
    module_name, sep, attr = spec.partition(":")
    if sep and _DOTTED.match(module_name):
        if not attr:
            raise UserError(f"target '{spec}' names no attribute after ':'; "
                            f"write {module_name}:NAME, e.g. {module_name}:build_model")
        if not _DOTTED.match(attr):
            raise UserError(f"target '{spec}': '{attr}' is not a Python name; "
                            f"write {module_name}:NAME")
        return _load_module_target(spec, module_name, attr)
    hint = ""
    if os.path.isfile(spec + ".py"):
        hint = f" (did you mean {spec}.py?)"
    elif not sep and _DOTTED.match(spec) and "." in spec:
        hint = f" (did you mean {spec}:NAME?)"
    raise UserError(f"cannot understand target '{spec}'{hint}: expected {_FORMS}")


def _split_file_spec(spec: str) -> tuple[str | None, str | None]:
    """(path, NAME or None) when `spec` names a file, else (None, None)."""
    if spec.endswith(".py") or os.path.exists(spec):
        return spec, None
    if ".py:" in spec:
        path, _, name = spec.rpartition(".py:")
        return path + ".py", name
    head, sep, name = spec.rpartition(":")
    if sep and head and os.path.exists(head):
        return head, name
    return None, None


# ---------------------------------------------------------------------------- model files


def _load_file_target(spec: str, path: str, name: str | None) -> Target:
    shown = path  # paths in messages are shown as the user wrote them
    if name is not None and not name.strip():
        raise UserError(f"target '{spec}' names nothing after ':'; write {shown}:NAME "
                        "(a function, an nn.Module instance or an nn.Module class in the file)")
    if name is not None:
        name = name.strip()
        if not _DOTTED.match(name):
            raise UserError(f"target '{spec}': '{name}' is not a Python name; write {shown}:NAME")
    if not os.path.exists(path):
        raise UserError(f"no such file: {shown}; check the path")
    if os.path.isdir(path):
        raise UserError(f"{shown} is a directory, not a model file; pass the Python file that "
                        f"defines the model, e.g. {os.path.join(shown, 'model.py')}")
    if not path.endswith(".py"):
        raise UserError(f"{shown} is not a .py file; pass the Python file that defines the model "
                        "(e.g. model.py)")
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise UserError(f"cannot read {shown}: {exc.strerror or exc}; "
                        "check its permissions") from exc
    if not source.strip():
        raise UserError(f"{shown} is empty: no model found; define build_model() returning "
                        "an nn.Module in it")

    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(real))[0])
    module_name = f"gradcheck_user_{stem}_{next(_counter)}"
    src = _Source(shown=shown, folder=folder, module_name=module_name, main_file=real)
    module = _import_file(src)

    if name is not None:
        obj = _lookup(module, name, src)
        build = _builder_for(obj, f"{shown}:{name}", src)
    else:
        build = _discover(module, src)
    return _user_target(spec, build, module, src)


class _Source:
    """Where user code lives: put on sys.path while it runs; finds its lines in tracebacks."""

    def __init__(self, shown: str, folder: str | None = None, module_name: str | None = None,
                 main_file: str | None = None, package: str | None = None) -> None:
        self.shown = shown
        self.folder = folder
        self.module_name = module_name
        self.main_file = main_file
        self.package = package

    def is_user_frame(self, frame: FrameType) -> bool:
        mod = frame.f_globals.get("__name__", "")
        if self.module_name and mod == self.module_name:
            return True
        if self.package and isinstance(mod, str) and (
                mod == self.package or mod.startswith(self.package + ".")):
            return True
        return self.in_user_tree(frame.f_code.co_filename)

    def in_user_tree(self, filename: str | None) -> bool:
        """True for files under the model file's folder, except installed or hidden ones
        (a virtual environment inside the project, gradcheck itself)."""
        if not self.folder or not filename or filename.startswith("<"):
            return False
        real = os.path.realpath(filename)
        if not real.startswith(self.folder + os.sep) or real.startswith(_PACKAGE_DIR + os.sep):
            return False
        rel_parts = os.path.relpath(real, self.folder).split(os.sep)
        return not any(part.startswith(".") or part in ("site-packages", "dist-packages")
                       for part in rel_parts)

    def display(self, filename: str) -> str:
        real = os.path.realpath(filename)
        if self.main_file and real == self.main_file:
            return self.shown
        rel = os.path.relpath(real)
        return real if rel.startswith("..") else rel

    def where(self, exc: BaseException) -> str | None:
        """'file:line' of the deepest traceback frame in user code, if any."""
        if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
            if not exc.filename.startswith("<"):
                return f"{self.display(exc.filename)}:{exc.lineno}"
        found = None
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            if self.is_user_frame(frame):
                found = f"{self.display(frame.f_code.co_filename)}:{lineno}"
        return found

    @contextlib.contextmanager
    def on_path(self) -> Iterator[None]:
        """Put the model file's folder first on sys.path (sibling imports) for the duration."""
        if not self.folder:
            yield
            return
        before = set(sys.modules)
        sys.path.insert(0, self.folder)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(self.folder)
            self._forget_siblings(before)

    def _forget_siblings(self, before: set[str]) -> None:
        """Drop the modules the user code imported from its own folder, so another model file
        with a sibling of the same name (helpers.py, layers.py) gets its own, not a cached one."""
        for name in set(sys.modules) - before:
            if name != self.module_name and self.in_user_tree(
                    getattr(sys.modules.get(name), "__file__", None)):
                sys.modules.pop(name, None)


def _import_file(src: _Source) -> ModuleType:
    assert src.main_file and src.module_name
    spec = importlib.util.spec_from_file_location(src.module_name, src.main_file)
    if spec is None or spec.loader is None:  # pragma: no cover - only for odd loaders
        raise UserError(f"cannot import {src.shown}; pass a regular Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[src.module_name] = module  # dataclasses, pickling and typing need it registered
    try:
        with src.on_path(), script_argv(src.main_file):
            spec.loader.exec_module(module)
    except BaseException as exc:
        if not is_user_code_failure(exc):
            raise
        sys.modules.pop(src.module_name, None)
        where = src.where(exc) or src.shown
        if isinstance(exc, ModuleNotFoundError):
            fix = f"install it or check the import in {src.shown}"
        else:
            fix = f"fix {src.shown} (--debug shows the traceback)"
        raise UserError(f"{where}: error while importing: {_exc_text(exc)}; {fix}") from exc
    return module


# ---------------------------------------------------------------------------- installed modules


def _load_module_target(spec: str, module_name: str, attr: str) -> Target:
    src = _Source(shown=module_name, package=module_name.split(".")[0])
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # `gradcheck` as a console script does not see the current folder otherwise
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        where = src.where(exc)
        at = f" ({where})" if where else ""
        itself = module_name == missing or module_name.startswith(missing + ".")
        raise UserError(f"cannot import module '{module_name}': {_exc_text(exc)}{at}; is "
                        f"{'it' if itself else repr(missing)} installed?") from exc
    except BaseException as exc:
        if not is_user_code_failure(exc):
            raise
        where = src.where(exc)
        at = f" at {where}" if where else ""
        raise UserError(f"cannot import module '{module_name}': error while importing{at}: "
                        f"{_exc_text(exc)}; fix the module (--debug shows the traceback)") from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    obj = _lookup(module, attr, src)
    build = _builder_for(obj, spec, src)
    return _user_target(spec, build, module, src)


# ---------------------------------------------------------------------------- finding the model


def _module_type() -> type:
    from torch import nn

    return nn.Module


def _lookup(module: ModuleType, name: str, src: _Source) -> Any:
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            found = _candidates(module)
            listing = ", ".join(found) if found else "no functions, nn.Module classes or instances"
            raise UserError(f"{src.shown} has no attribute '{name}'; found: {listing}; "
                            f"pick one with {src.shown}:NAME")
        obj = getattr(obj, part)
    return obj


def _candidates(module: ModuleType) -> list[str]:
    """Names a user may pick with :NAME: functions, Module classes and instances defined there."""
    module_cls = _module_type()
    names = []
    for key, value in vars(module).items():
        if key.startswith("_"):
            continue
        if isinstance(value, module_cls):
            names.append(key)
        elif isinstance(value, type) and issubclass(value, module_cls):
            if value.__module__ == module.__name__:
                names.append(key)
        elif inspect.isfunction(value) and value.__module__ == module.__name__:
            names.append(key)
    return names


def _kind(obj: Any) -> str:
    if obj is None:
        return "None"
    return _a(type(obj).__name__)


def _required_params(fn: Any) -> list[str] | None:
    """Names of the parameters `fn()` would be missing; None when the signature is unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return [p.name for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _builder_for(obj: Any, label: str, src: _Source) -> Callable[[], Any]:
    """obj picked explicitly (:NAME or pkg.module:attr) -> a build_model callable."""
    module_cls = _module_type()
    if isinstance(obj, module_cls):
        return lambda: obj
    if isinstance(obj, type):
        if not issubclass(obj, module_cls):
            raise UserError(f"{label} is the class {obj.__name__}, which is not an nn.Module "
                            "subclass; pick an nn.Module class, instance or a function "
                            "returning one")
        return _checked_call(obj, f"{label}()", src)
    if callable(obj):
        return _checked_call(obj, f"{label}()", src)
    raise UserError(f"{label} is {_kind(obj)}; expected a function returning an nn.Module, "
                    "an nn.Module instance or an nn.Module subclass")


def _checked_call(factory: Callable[[], Any], label: str, src: _Source) -> Callable[[], Any]:
    """A build_model that calls factory() and turns its failures into UserErrors."""
    required = _required_params(factory)
    if required:
        raise UserError(f"{label} needs arguments ({', '.join(required)}) but gradcheck calls it "
                        "with none; give them defaults, or define build_model() that returns "
                        "the configured model")
    module_cls = _module_type()

    def build_model() -> Any:
        model = _call_user(src, label, "fix it", factory)
        if not isinstance(model, module_cls):
            raise UserError(f"{label} returned {_kind(model)}, not an nn.Module; "
                            "return the model itself, e.g. `return Net()`")
        return model

    return build_model


def _call_user(src: _Source, label: str, fix: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) with the user's folder on sys.path; its failure becomes a one-line UserError."""
    try:
        with src.on_path():
            return fn(*args)
    except UserError:
        raise
    except BaseException as exc:
        if not is_user_code_failure(exc):
            raise
        where = src.where(exc)
        at = f" (at {where})" if where else ""
        if not isinstance(exc, Exception):  # sys.exit() in build_model or make_batch
            fix = exit_fix(exc)
        raise UserError(f"{label} raised {_exc_text(exc)}{at}; {fix} "
                        "(--debug shows the traceback)") from exc


def _discover(module: ModuleType, src: _Source) -> Callable[[], Any]:
    """The model-file contract: build_model() > get_model() > `model` > the single Module class."""
    module_cls = _module_type()
    shown = src.shown
    for fn_name in ("build_model", "get_model"):
        fn = getattr(module, fn_name, None)
        if fn is None:
            continue
        if not callable(fn) or isinstance(fn, (type, module_cls)):
            raise UserError(f"{shown}: {fn_name} is {_kind(fn)}, expected a function "
                            f"{fn_name}() returning an nn.Module; make it a function")
        return _checked_call(fn, f"{shown}:{fn_name}()", src)
    instance = getattr(module, "model", None)
    if isinstance(instance, module_cls):
        return lambda: instance

    classes: list[type] = []
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, module_cls)
                and value.__module__ == module.__name__ and value not in classes):
            classes.append(value)
    no_args = [c for c in classes if not _required_params(c)]
    if len(no_args) == 1:
        return _checked_call(no_args[0], f"{shown}:{no_args[0].__name__}()", src)
    if len(no_args) > 1:
        names = ", ".join(c.__name__ for c in no_args)
        raise UserError(f"{shown}: found {len(no_args)} nn.Module classes ({names}); pick one with "
                        f"{shown}:{no_args[-1].__name__}, or define build_model()")

    found = []
    instances = [k for k, v in vars(module).items()
                 if isinstance(v, module_cls) and not k.startswith("_")]
    if instances:
        found.append("nn.Module instance " + ", ".join(f"`{k}`" for k in instances)
                     + f" (pick it with {shown}:{instances[0]})")
    for cls in classes:
        found.append(f"nn.Module class {cls.__name__}({', '.join(_required_params(cls) or [])}) "
                     "that needs arguments")
    if "model" in vars(module) and not isinstance(instance, module_cls):
        found.append(f"`model` is {_kind(instance)}, not an nn.Module")
    found_text = "; ".join(found) if found else "none of these"
    raise UserError(f"{shown}: no model found: looked for {_LOOKED_FOR}; found {found_text}; "
                    "define build_model() returning your nn.Module")


def _user_target(spec: str, build: Callable[[], Any], module: ModuleType, src: _Source) -> Target:
    """The Target of a user module: `build`, and its optional make_batch and loss_fn."""
    make_batch = _optional_fn(module, src, "make_batch",
                              "make_batch(batch_size) returning inputs or (inputs, target)")
    loss_fn = _optional_fn(module, src, "loss_fn", "loss_fn(output, target) returning a scalar tensor")
    return Target(name=spec, build_model=build,
                  make_batch=None if make_batch is None else _checked_make_batch(make_batch, src),
                  loss_fn=loss_fn)


def _optional_fn(module: ModuleType, src: _Source, name: str, expected: str) -> Any:
    """module.<name> when it is defined (None when not); a UserError when it is not callable."""
    fn = getattr(module, name, None)
    if fn is not None and not callable(fn):
        raise UserError(f"{src.shown}: {name} is {_kind(fn)}, expected a function {expected}")
    return fn


def _checked_make_batch(fn: Callable[[int], Any], src: _Source) -> Callable[[int], Any]:
    label = f"{src.shown}:make_batch"

    def make_batch(batch_size: int) -> Any:
        return _call_user(src, f"{label}({batch_size})", "fix make_batch", fn, batch_size)

    return make_batch
