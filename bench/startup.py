"""Start-up of ``gradcheck scan``: the whole command next to ``import torch`` plus the scan's own work.

Three things are timed, each in a fresh Python process started from an empty temporary directory
(so no pyproject.toml is found), interleaved over R repeats (the order rotates), medians reported:

* ``torch``: ``python -c "import torch"``, the floor any PyTorch tool pays;
* ``cli``: ``python -m gradcheck_cli scan builtin:NAME --format json`` end to end, stdout discarded;
* ``work``: inside one process that has already imported torch and the scan's modules
  (gradcheck_cli.api, measure.probe, analyse.pipeline), the time of the first ``api.scan`` of the
  same builtin: the probe and the analysis, cold, as the CLI runs them.

``--clock cpu`` takes CPU times instead of wall times (the child processes' user + system time;
``time.process_time`` around the scan): on a machine whose cores other processes compete for, the
work done varies much less than the wall time.

``--bytecode`` says whether the children read compiled bytecode, as an installed package does (pip
compiles a wheel's modules at install time; an editable checkout writes ``__pycache__`` on first
import): ``cached`` (default) runs them with ``PYTHONPYCACHEPREFIX`` set to a directory of this
benchmark's own (``gradcheck-startup-pycache`` in the temporary directory; the checkout is not
written to) and ``PYTHONDONTWRITEBYTECODE`` unset, after one untimed warm-up round that fills it;
``source`` keeps the environment as it is: under ``PYTHONDONTWRITEBYTECODE=1`` (set on the shared
development machine) a checkout without ``__pycache__`` compiles every gradcheck module from source
on every run, while torch's bytecode, compiled at install, is read: about 0.1-0.15 s of CPU that a
user's installed gradcheck does not spend.

``ratio = cli / (torch + work)``: 1.0 means the command costs nothing beyond importing torch and
doing the scan; the rest is the CLI's own start-up (the interpreter, typer and its pydantic, the
package's modules, the settings, rendering). The issue's target is 1.1.

``--imports`` adds a ``python -X importtime`` profile of one CLI run: the top-level imports by
cumulative time, torch excluded, and whether Rich or xml.etree were imported at all.

    python bench/startup.py                      # builtin:relu-he, 7 repeats (~1 min on 2 cores)
    python bench/startup.py --model lstm --repeats 11 --imports
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

_WORK = """
import sys, time
import torch
import gradcheck_cli.analyse.pipeline, gradcheck_cli.measure.probe
from gradcheck_cli import api
clock = time.process_time if sys.argv[2] == "cpu" else time.perf_counter
start = clock()
api.scan(sys.argv[1])
print(clock() - start)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_env(bytecode: str) -> dict[str, str]:
    """The children's environment: `cached` reads (and on the warm-up writes) bytecode under a
    directory of the benchmark's own; `source` is this process's environment unchanged."""
    env = dict(os.environ)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "gradcheck-startup-pycache")
    return env


def _run(argv: Sequence[str], cwd: str, clock: str = "wall",
         env: dict[str, str] | None = None) -> tuple[float, str, str]:
    """The wall (or CPU) time of one process, its stdout and its stderr; a failed run stops the
    benchmark."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = _children_cpu() - cpu if clock == "cpu" else time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: the scan has findings, still a complete run
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return elapsed, done.stdout, done.stderr


def measure(model: str, repeats: int, cwd: str, clock: str, env: dict[str, str]) -> dict[str, list[float]]:
    commands = {
        "torch": [sys.executable, "-c", "import torch"],
        "cli": [sys.executable, "-m", "gradcheck_cli", "scan", f"builtin:{model}", "--format", "json"],
        "work": [sys.executable, "-c", _WORK, f"builtin:{model}", clock],
    }
    times: dict[str, list[float]] = {key: [] for key in commands}
    keys = list(commands)
    for key in keys:  # untimed warm-up: the bytecode cache (--bytecode cached) and the OS's file cache
        _run(commands[key], cwd, clock, env)
    for r in range(repeats):
        for key in keys[r % 3:] + keys[:r % 3]:  # rotate the order: all three share the noise
            elapsed, out, _ = _run(commands[key], cwd, clock, env)
            times[key].append(float(out.strip()) if key == "work" else elapsed)
    return times


def import_profile(model: str, cwd: str, top: int, env: dict[str, str]) -> list[str]:
    """The CLI run's top-level imports by cumulative time (torch excluded), from -X importtime."""
    argv = [sys.executable, "-X", "importtime", "-m", "gradcheck_cli", "scan", f"builtin:{model}",
            "--format", "json"]
    _, _, err = _run(argv, cwd, env=env)
    rows = []
    for line in err.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match.group(1)), len(match.group(2)), match.group(3)))
    top_level = [(us, name) for us, indent, name in rows if indent == 1]
    names = {name for _, _, name in rows}
    lines = [f"  {us / 1e3:7.1f} ms  {name}"
             for us, name in sorted(top_level, reverse=True) if name != "torch"][:top]
    total = sum(us for us, name in top_level if name != "torch") / 1e3
    rich = sorted(n for n in names if n == "rich" or n.startswith("rich."))
    xml = sorted(n for n in names if n == "xml" or n.startswith("xml."))
    lines.append(f"  imports other than torch: {total:.1f} ms in all; "
                 f"rich: {len(rich)} modules, xml: {len(xml)} modules")
    return lines


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="relu-he", help="a builtin (default relu-he)")
    parser.add_argument("--repeats", "-R", type=int, default=7)
    parser.add_argument("--imports", action="store_true", help="also profile the CLI's imports")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or the processes' CPU time, steadier on a busy machine")
    parser.add_argument("--top", type=int, default=12, help="imports listed by --imports")
    parser.add_argument("--bytecode", choices=("cached", "source"), default="cached",
                        help="cached (default): the children read compiled bytecode, as an installed package "
                             "does; source: the environment as it is (see the module docstring)")
    args = parser.parse_args(argv)
    import gradcheck_cli

    print(f"gradcheck start-up: {gradcheck_cli.__file__}, builtin:{args.model}, {args.repeats} "
          f"repeats, {args.clock} clock, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {_load()}, bytecode {args.bytecode} (PYTHONDONTWRITEBYTECODE="
          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')} here)")
    env = child_env(args.bytecode)
    with tempfile.TemporaryDirectory() as cwd:
        times = measure(args.model, args.repeats, cwd, args.clock, env)
        med = {key: statistics.median(values) for key, values in times.items()}
        for key, label in (("torch", 'python -c "import torch"'), ("work", "api.scan in-process"),
                           ("cli", "gradcheck scan --format json")):
            print(f"  {label:<30} median {med[key]:6.3f} s  (min {min(times[key]):.3f}, "
                  f"max {max(times[key]):.3f})")
        rest = med["cli"] - med["torch"] - med["work"]
        print(f"  ratio cli / (torch + work) = {med['cli'] / (med['torch'] + med['work']):.3f}; "
              f"the CLI's own start-up: {rest:+.3f} s; load average {_load()}")
        if args.imports:
            print("\n".join(import_profile(args.model, cwd, args.top, env)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
