"""The command line: the ONLY code that parses argv, prints, writes files or exits.

Owns the Typer app (app.py), settings from flags, recipes and `[tool.gradcheck]` (settings.py,
recipes.py, pyproject.py), output files and exit codes (output.py, output_file.py), baselines and
the progress bar; the command's start-up (lazy_coercion.py: no pydantic where typer's result is
certain; process_heap.py: the heap frozen after torch's import). May import every other stage;
nothing imports it. Importing it must not import torch (`gradcheck --help` stays fast): torch is
imported inside the commands that scan.
"""
