"""The `sdc` command line: one module per command group, all registered on one typer app.

build.py (build), generate.py (generate), bundle.py (inspect, verify), compare.py (compare), bench.py (bench), eval.py (eval), engines.py (engines build); app.py holds
the app, the shared options and the entry point `main`.
"""

from sdc.cli import build, generate, bundle, compare, bench, eval, engines  # noqa: F401,I001  (registers the commands, in --help order)
from sdc.cli.app import app, main

__all__ = ["app", "main"]
