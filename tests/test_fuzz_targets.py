"""Property tests of the target parser: whatever TARGET string a user types, resolve_target gives a
Target or one clean, one-line UserError, never any other exception.

Safety: resolving a target imports code. Random `pkg.module:attr` strings must not import whatever
installed module they happen to name (`antigravity` opens a browser, `this` prints), so
`importlib.import_module` is replaced, for targets.py only, by one that knows a few harmless
modules and reports every other name as not installed, exactly as Python does for a missing
module. Model files are imported for real, but only inside the fuzzing folder (any other file
would fail the test instead of being executed).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import string
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gradcheck_cli.errors import UserError
from gradcheck_cli.target import resolve as targets
from gradcheck_cli.target.resolve import Target, resolve_target

SAFE_MODULES = ("json", "os.path", "collections", "gc_fuzz_pkg", "gc_fuzz_pkg.models")
"""What the fake import may really import; everything else is 'not installed'."""

FILES = {
    "model.py": "from torch import nn\n\ndef build_model():\n    return nn.Linear(2, 2)\n\nnet = nn.Linear(3, 3)\n",
    "broken.py": "def build_model(:\n",
    "empty.py": "",
    "raises.py": "raise RuntimeError('at import')\n",
    "nomodel.py": "VALUE = 1\n",
    "notes.txt": "not python\n",
    "models/cnn.py": "from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                     "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n",
    "ünïcode dir/m.py": "from torch import nn\nmodel = nn.Linear(2, 2)\n",
    "gc_fuzz_pkg/__init__.py": "",
    "gc_fuzz_pkg/models.py": "from torch import nn\n\ndef build():\n    return nn.Linear(2, 2)\n\nx = 3\n",
}
NAMES = ["model.py", "broken.py", "empty.py", "raises.py", "nomodel.py", "notes.txt", "models",
         "models/cnn.py", "ünïcode dir/m.py", "missing.py", "models/", "./model.py", "..", ".",
         "gc_fuzz_pkg", "gc_fuzz_pkg/models.py", "model", "model.PY", "/", "~", "C:\\model.py"]
ATTRS = ["build_model", "net", "Net", "nope", "build", "x", "a.b", "1bad", "", " ", "dumps", "sep",
         "__class__", "__init__", "OrderedDict", "Net.__init__"]
MODULES = [*SAFE_MODULES, "antigravity", "this", "os", "torch.nn", "a.b.c", "_x", "Δ"]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    for name, text in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@contextlib.contextmanager
def sandbox(folder: Path) -> Iterator[None]:
    """cwd = the fuzzing folder, imports restricted as the module docstring says."""
    real_import_module = importlib.import_module
    real_import_file = targets._import_file
    resolved_folder = os.path.realpath(folder) + os.sep

    def import_module(name: str, package: str | None = None) -> ModuleType:
        if name in SAFE_MODULES:
            return real_import_module(name)
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    def import_file(src: targets._Source) -> ModuleType:
        assert src.main_file and src.main_file.startswith(resolved_folder), src.main_file
        return real_import_file(src)

    before = os.getcwd()
    os.chdir(folder)
    mp = pytest.MonkeyPatch()
    # targets.py's own name `importlib` only: the real module stays untouched for everyone else
    mp.setattr(targets, "importlib", SimpleNamespace(import_module=import_module, util=importlib.util))
    mp.setattr(targets, "_import_file", import_file)
    mp.syspath_prepend(str(folder))
    try:
        yield
    finally:
        mp.undo()
        os.chdir(before)


def check(spec: str, folder: Path) -> None:
    """The property: a Target, or a UserError whose message is one line."""
    with sandbox(folder):
        try:
            result = resolve_target(spec)
        except UserError as exc:
            message = str(exc)
            assert message and len(message.splitlines()) == 1, repr(message)
            return
    assert isinstance(result, Target)
    assert callable(result.build_model)


composed = st.one_of(
    st.sampled_from(NAMES),
    st.builds(lambda n, a: f"{n}:{a}", st.sampled_from(NAMES), st.sampled_from(ATTRS)),
    st.builds(lambda m, a: f"{m}:{a}", st.sampled_from(MODULES), st.sampled_from(ATTRS)),
    st.builds(lambda t: f"builtin:{t}", st.text(max_size=30)),
    st.builds(lambda p, s: p + s, st.sampled_from(NAMES + MODULES + ["builtin:", ":", "::"]),
              st.text(alphabet=string.printable + "äΔ:/.\\", max_size=20)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.one_of(st.text(), composed))
@example(spec="")
@example(spec="x" * 5000)
@example(spec="model.py" + "/" * 300)
@example(spec="a\x00b.py")
@example(spec="model.py\n:net")
@example(spec="builtin:deep-sigmoid")
@example(spec="builtin:\u200b")
@example(spec="gc_fuzz_pkg.models:build")
@example(spec="antigravity:x")
def test_any_string_gives_a_target_or_one_clean_error(spec: str, fuzz_dir: Path) -> None:
    check(spec, fuzz_dir)


def test_the_sandbox_resolves_the_real_forms(fuzz_dir: Path) -> None:
    """The strategies reach every kind of outcome, so the property is not vacuous."""
    for spec in ("model.py", "model.py:net", "models/cnn.py", "gc_fuzz_pkg.models:build", "builtin:relu-he"):
        with sandbox(fuzz_dir):
            assert isinstance(resolve_target(spec), Target), spec
    for spec in ("broken.py", "raises.py", "antigravity:x", "models", "notes.txt", "model.py:nope"):
        with sandbox(fuzz_dir), pytest.raises(UserError):
            resolve_target(spec)
