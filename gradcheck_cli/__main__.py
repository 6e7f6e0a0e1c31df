"""python -m gradcheck_cli: the CLI (cli/app.py), or one clear line when its dependencies are missing."""

import sys

try:
    from gradcheck_cli.cli.app import main
except ModuleNotFoundError as exc:  # e.g. the package run from a checkout with a Python that lacks typer
    if exc.name not in ("typer", "rich", "yaml", "click"):
        raise
    sys.stderr.write(f"gradcheck: error: the Python at {sys.executable} lacks gradcheck's dependency "
                     f"'{exc.name}'; install the package into it (pip install -e . from the checkout, "
                     "after pip install torch==2.13.0) or use the interpreter it is installed in\n")
    sys.exit(2)

main()
