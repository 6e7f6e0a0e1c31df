"""resolve_target: model files, file.py:NAME, pkg.module:attr, builtin:NAME, and every error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.target.resolve import Target, resolve_target

HEADER = "import torch\nfrom torch import nn\n"


def write(folder: Path, name: str, body: str, header: bool = True) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((HEADER if header else "") + textwrap.dedent(body).lstrip("\n"))
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path so targets are written as a user would: `model.py`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def error_of(spec: str) -> str:
    with pytest.raises(UserError) as info:
        resolve_target(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def build_error(spec: str) -> UserError:
    target = resolve_target(spec)
    with pytest.raises(UserError) as info:
        target.build_model()
    assert "\n" not in str(info.value)
    return info.value


# ------------------------------------------------------------------------------------ discovery


def test_build_model_is_preferred(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        def build_model():
            return nn.Linear(3, 2)
        def get_model():
            return nn.Linear(5, 5)
        model = nn.Linear(7, 7)
        class Net(nn.Module):
            pass
    """)
    target = resolve_target("model.py")
    assert isinstance(target, Target)
    assert target.name == "model.py"
    built = target.build_model()
    assert isinstance(built, nn.Linear) and built.in_features == 3
    assert target.make_batch is None and target.loss_fn is None


def test_get_model_then_module_level_instance(tmp_path: Path) -> None:
    write(tmp_path, "a.py", """
        def get_model():
            return nn.Linear(5, 5)
        model = nn.Linear(7, 7)
    """)
    assert resolve_target("a.py").build_model().in_features == 5
    write(tmp_path, "b.py", """
        model = nn.Linear(7, 7)
        class Net(nn.Module):
            pass
    """)
    target = resolve_target("b.py")
    assert target.build_model() is target.build_model()  # the user's own instance
    assert target.build_model().in_features == 7


def test_single_class_defined_in_the_file(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        from torch.nn import Linear  # imported classes do not count
        class Block(nn.Module):  # needs arguments: not a candidate
            def __init__(self, dim):
                super().__init__()
                self.fc = nn.Linear(dim, dim)
        class Net(nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.block = Block(width)
    """)
    model = resolve_target("model.py").build_model()
    assert type(model).__name__ == "Net"


def test_several_classes_are_ambiguous(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        class Encoder(nn.Module):
            pass
        class Net(nn.Module):
            pass
    """)
    message = error_of("model.py")
    assert "model.py: found 2 nn.Module classes (Encoder, Net)" in message
    assert "pick one with model.py:Net" in message
    assert type(resolve_target("model.py:Encoder").build_model()).__name__ == "Encoder"


def test_nothing_found_says_what_was_looked_for_and_found(tmp_path: Path) -> None:
    write(tmp_path, "empty_ish.py", "x = 1\n")
    message = error_of("empty_ish.py")
    assert message.startswith("empty_ish.py: no model found")
    assert "build_model()" in message and "get_model()" in message and "`model`" in message
    assert "found none of these" in message

    write(tmp_path, "inst.py", "net = nn.Linear(2, 2)\nmodel = 'not a module'\n")
    message = error_of("inst.py")
    assert "nn.Module instance `net`" in message and "inst.py:net" in message
    assert "`model` is a str, not an nn.Module" in message

    write(tmp_path, "args.py", """
        class Block(nn.Module):
            def __init__(self, dim, depth):
                super().__init__()
    """)
    assert "nn.Module class Block(dim, depth) that needs arguments" in error_of("args.py")


def test_build_model_raising_is_converted_when_called(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        def build_model():
            width = 0
            raise ValueError(f"bad width {width}")
    """, header=False)
    target = resolve_target("model.py")  # importing is fine: build_model is not called yet
    error = build_error("model.py")
    assert str(error).startswith("model.py:build_model() raised ValueError: bad width 0")
    assert "(at model.py:3)" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert target.name == "model.py"


def test_class_constructor_raising_is_converted(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(-1, 2)
    """)
    message = str(build_error("model.py"))
    assert message.startswith("model.py:Net() raised RuntimeError")
    assert "(at model.py:6)" in message


def test_build_model_returning_a_non_module(tmp_path: Path) -> None:
    write(tmp_path, "model.py", "def build_model():\n    return 3\n", header=False)
    message = str(build_error("model.py"))
    assert message.startswith("model.py:build_model() returned an int, not an nn.Module")


def test_build_model_needing_arguments_or_not_callable(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "def build_model(width):\n    pass\n", header=False)
    assert "a.py:build_model() needs arguments (width)" in error_of("a.py")
    write(tmp_path, "b.py", "build_model = 3\n", header=False)
    assert "b.py: build_model is an int, expected a function" in error_of("b.py")


# ------------------------------------------------------------------------------------ :NAME


def test_explicit_name_function_instance_and_class(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        def small():
            return nn.Linear(2, 2)
        big = nn.Linear(8, 8)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)
        class Other(nn.Module):
            pass
        def build_model():
            return nn.Linear(1, 1)
    """)
    assert resolve_target("model.py:small").build_model().in_features == 2
    assert resolve_target("model.py:big").build_model().in_features == 8
    assert resolve_target("model.py:Net").build_model().fc.in_features == 4
    assert resolve_target("model.py:small").name == "model.py:small"


def test_explicit_name_errors(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        class Block(nn.Module):
            def __init__(self, dim):
                super().__init__()
        class Plain:
            pass
        width = 3
        def make():
            return "not a module"
    """)
    message = error_of("model.py:Nope")
    assert "model.py has no attribute 'Nope'" in message and "Block" in message
    assert "model.py:Block() needs arguments (dim)" in error_of("model.py:Block")
    assert "model.py:Plain is the class Plain, which is not an nn.Module subclass" in error_of(
        "model.py:Plain")
    assert "model.py:width is an int; expected a function" in error_of("model.py:width")
    assert "model.py:make() returned a str, not an nn.Module" in str(build_error("model.py:make"))
    assert "names nothing after ':'" in error_of("model.py:")
    assert "is not a Python name" in error_of("model.py:1abc")


# ------------------------------------------------------------------------------------ file errors


def test_file_errors(tmp_path: Path) -> None:
    assert error_of("missing.py") == "no such file: missing.py; check the path"
    assert error_of("missing.py:Net") == "no such file: missing.py; check the path"
    (tmp_path / "models").mkdir()
    assert "models is a directory" in error_of("models")
    (tmp_path / "model.txt").write_text("x = 1\n")
    assert "model.txt is not a .py file" in error_of("model.txt")
    (tmp_path / "blank.py").write_text("\n  \n")
    assert "blank.py is empty: no model found" in error_of("blank.py")


def test_import_error_shows_the_users_line(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        x = 1

        y = foo + 1
    """)
    assert error_of("model.py").startswith(
        "model.py:5: error while importing: NameError: name 'foo' is not defined")


def test_import_error_other_kinds(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text("x = 1\ndef broken(:\n")
    message = error_of("syntax.py")
    assert message.startswith("syntax.py:2: error while importing: SyntaxError")
    (tmp_path / "dep.py").write_text("import not_a_real_module_xyz\n")
    message = error_of("dep.py")
    assert "dep.py:1: error while importing: ModuleNotFoundError" in message
    assert "not_a_real_module_xyz" in message
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    assert error_of("exits.py").startswith("exits.py:2: error while importing: SystemExit: 3")
    (tmp_path / "torch_err.py").write_text("import torch\n\ntorch.zeros(2) @ torch.zeros(3)\n")
    assert error_of("torch_err.py").startswith("torch_err.py:3: error while importing: "
                                               "RuntimeError")
    assert "syntax" not in sys.modules


def test_sibling_imports_and_sys_path_restored(tmp_path: Path) -> None:
    path_before = list(sys.path)
    for name, width in (("one", 3), ("two", 5)):
        write(tmp_path / name, "helpers.py", f"""
            WIDTH = {width}
            def make():
                return nn.Linear(WIDTH, 1)
        """)
        write(tmp_path / name, "model.py", """
            from helpers import make
            def build_model():
                import helpers  # a late import works too
                assert helpers.WIDTH == make().in_features
                return make()
        """)
    assert resolve_target("one/model.py").build_model().in_features == 3
    assert resolve_target("two/model.py").build_model().in_features == 5  # not one's helpers
    assert sys.path == path_before
    assert "helpers" not in sys.modules


def test_error_in_a_sibling_module_points_there(tmp_path: Path) -> None:
    (tmp_path / "layers.py").write_text("import math\n\nX = undefined_name\n")
    (tmp_path / "model.py").write_text("import layers\n")
    assert error_of("model.py").startswith("layers.py:3: error while importing: NameError")


def test_make_batch_and_loss_fn_are_taken_from_the_file(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        def build_model():
            return nn.Linear(3, 2)
        def make_batch(batch_size):
            return torch.randn(batch_size, 3), torch.randint(0, 2, (batch_size,))
        def loss_fn(output, target):
            return output.sum()
    """)
    target = resolve_target("model.py")
    assert target.make_batch is not None and target.loss_fn is not None
    x, y = target.make_batch(4)
    assert x.shape == (4, 3) and y.shape == (4,)
    assert target.loss_fn(torch.ones(2), None).item() == 2.0


def test_make_batch_errors(tmp_path: Path) -> None:
    write(tmp_path, "a.py", """
        model = nn.Linear(3, 2)
        def make_batch(batch_size):
            raise KeyError("images")
    """)
    target = resolve_target("a.py")
    assert target.make_batch is not None
    with pytest.raises(UserError) as info:
        target.make_batch(4)
    assert str(info.value).startswith("a.py:make_batch(4) raised KeyError: 'images' (at a.py:5)")
    assert isinstance(info.value.__cause__, KeyError)
    write(tmp_path, "b.py", "model = nn.Linear(3, 2)\nmake_batch = 4\nloss_fn = 'mse'\n")
    assert "b.py: make_batch is an int, expected a function make_batch(batch_size)" in error_of(
        "b.py")
    write(tmp_path, "c.py", "model = nn.Linear(3, 2)\nloss_fn = 'mse'\n")
    assert "c.py: loss_fn is a str, expected a function loss_fn(output, target)" in error_of("c.py")


def test_file_may_define_dataclasses(tmp_path: Path) -> None:
    write(tmp_path, "model.py", """
        from dataclasses import dataclass
        @dataclass
        class Config:
            width: int = 4
        def build_model():
            return nn.Linear(Config().width, 1)
    """)
    assert resolve_target("model.py").build_model().in_features == 4


# -------------------------------------------------------------------------------- pkg.module:attr


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path / "site", "gc_testpkg/__init__.py", "", header=False)
    write(tmp_path / "site", "gc_testpkg/models.py", """
        def build():
            return nn.Linear(6, 2)
        net = nn.Linear(9, 9)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)
        def make_batch(batch_size):
            return torch.randn(batch_size, 6)
        def loss_fn(output, target):
            return output.mean()
        def failing():
            raise RuntimeError("no weights")
    """)
    write(tmp_path / "site", "gc_testpkg/broken.py", "import torch\n\nVALUE = missing_name\n",
          header=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield "gc_testpkg"
    for name in [m for m in sys.modules if m.startswith("gc_testpkg")]:
        del sys.modules[name]


def test_module_attr(package: str) -> None:
    target = resolve_target(f"{package}.models:build")
    assert target.name == f"{package}.models:build"
    assert target.build_model().in_features == 6
    assert target.make_batch is not None and target.loss_fn is not None
    assert target.make_batch(3).shape == (3, 6)
    assert resolve_target(f"{package}.models:net").build_model().in_features == 9
    assert isinstance(resolve_target(f"{package}.models:Net").build_model(), nn.Module)


def test_module_attr_errors(package: str) -> None:
    message = error_of("gc_nopkg_xyz.models:build")
    assert message.startswith("cannot import module 'gc_nopkg_xyz.models': ModuleNotFoundError")
    assert message.endswith("is it installed?")
    message = error_of(f"{package}.nomodule:build")
    assert f"cannot import module '{package}.nomodule'" in message and "installed?" in message
    message = error_of(f"{package}.broken:x")
    assert message.startswith(f"cannot import module '{package}.broken': error while importing at ")
    assert "broken.py:3: NameError: name 'missing_name' is not defined" in message
    message = error_of(f"{package}.models:nope")
    assert "has no attribute 'nope'" in message and "build" in message
    message = str(build_error(f"{package}.models:failing"))
    assert message.startswith(f"{package}.models:failing() raised RuntimeError: no weights (at ")
    assert "models.py:" in message
    assert "names no attribute" in error_of(f"{package}.models:")


# ------------------------------------------------------------------------------------ other forms


def test_unknown_forms(tmp_path: Path) -> None:
    message = error_of("foo")
    assert message.startswith("cannot understand target 'foo': expected a model file")
    assert "pkg.module:attr" in message and "builtin:NAME" in message
    (tmp_path / "net.py").write_text("x = 1\n")
    assert "(did you mean net.py?)" in error_of("net")
    assert "(did you mean torch.nn:NAME?)" in error_of("torch.nn")
    assert "no target given" in error_of("  ")


def test_builtin() -> None:
    assert "needs a model name" in error_of("builtin:")
    zoo = pytest.importorskip("gradcheck_cli.target.zoo")
    if not hasattr(zoo, "load_target"):
        pytest.skip("the zoo is not written yet")
    with pytest.raises(UserError):
        resolve_target("builtin:no-such-model-xyz")


def test_loaded_models_run(tmp_path: Path) -> None:
    write(tmp_path, "model.py", "model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())\n")
    out = resolve_target(str(tmp_path / "model.py")).build_model()(torch.ones(2, 3))
    assert out.shape == (2, 4)
