"""Property tests of the recipe loader: any input gives a valid recipe or one clean RecipeError
(one printable line starting with FILE:), never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gradcheck_cli.cli.recipes import Recipe, RecipeError, parse_recipe
from gradcheck_cli.cli.settings import SETTINGS, resolve

FOLDER = Path(__file__).resolve().parent
SHOWN = "fuzz.yaml"

# Keys the loader knows, plus near misses, so that generated mappings reach the validators.
KEYS = sorted({"version", "defaults", "scans", "name", "target", "lr", "batchs", "thresholds",
               "optimizer", *(key.split(".")[-1] for key in SETTINGS), *(key.split(".")[0] for key in SETTINGS)})
TARGETS = ["builtin:lstm", "builtin:nope", "pkg.mod:attr", "test_fuzz_recipes.py", "missing.py",
           "test_fuzz_recipes.py:build", ".", ""]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["1e-3", "3x32x32", "adam", "exploding", "any", "cuda:0"] + TARGETS),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(0, 3)),
                        children, max_size=5),
    ),
    max_leaves=10,
)


# Plausible values per key, so that a good share of the near-valid recipes load.
GOOD_VALUES: list[Any] = [1, 2, 0, "cpu", "cuda:0", {"name": "adam", "lr": 0.01}, "sgd", ["vanishing"], "any",
                          {"min_stack": 3, "vanish_relative": "1e-4"}, 30, [3, 8], "w.pt", "1e-3"]


def _near_valid() -> st.SearchStrategy[dict[str, Any]]:
    """Recipes of the right shape (version 1, scans with a name and a target) whose setting keys
    and values are drawn at random, so that the validators see both good and bad values."""
    value = st.one_of(st.sampled_from(GOOD_VALUES), values)
    key = st.sampled_from(sorted({key.split(".")[0] for key in SETTINGS} | {"batchs"}))
    setting = st.dictionaries(key, value, max_size=3)
    scan = st.fixed_dictionaries(
        {"name": st.sampled_from(["a", "b", "c"]), "target": st.sampled_from(TARGETS)},
    ).flatmap(lambda base: setting.map(lambda extra: {**base, **extra}))
    return st.fixed_dictionaries({"version": st.just(1), "defaults": setting,
                                  "scans": st.lists(scan, min_size=1, max_size=3)})


def _check(text: str) -> None:
    try:
        recipe = parse_recipe(text, SHOWN, FOLDER)
    except RecipeError as exc:
        message = str(exc)
        assert message.isprintable() and message.startswith(f"{SHOWN}:"), message
        return
    assert isinstance(recipe, Recipe) and recipe.scans
    for scan in recipe.scans:  # a recipe that loads resolves to a complete configuration
        resolved = resolve(scan.defaults, scan.overrides)
        resolved.scan_config()
        resolved.thresholds()


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200))
def test_any_text_gives_a_recipe_or_one_clean_error(text: str) -> None:
    _check(text)


@FUZZ
@given(st.lists(st.sampled_from(["version: 1\n", "scans:\n", "  - name: a\n", "    target: builtin:lstm\n",
                                 "defaults:\n", "  batches: 2\n", "  - ", "{", "]", ": ", "&a ", "*a ", "!!",
                                 "    thresholds: {min_stack: 3}\n", "\t", "'", "#", "---\n", "<<: *a\n"]),
                max_size=12))
def test_yaml_like_fragments_give_a_recipe_or_one_clean_error(parts: list[str]) -> None:
    _check("".join(parts))


@FUZZ
@given(values)
@example("\n")  # found by this test: a value with a newline made a two-line message
@example({"version": 1, "scans": [{"name": "a\x1b", "target": "builtin:lstm", "batchs\t": 1}]})
def test_any_structure_gives_a_recipe_or_one_clean_error(data: Any) -> None:
    _check(yaml.safe_dump(data))


@FUZZ
@given(_near_valid())
def test_near_valid_recipes_give_a_recipe_or_one_clean_error(data: dict[str, Any]) -> None:
    _check(yaml.safe_dump(data))
