"""The `sdc` typer app, the options several commands share, and the entry point.

Heavy imports (paddle, onnx, onnxruntime) happen inside the commands, so `sdc --help` is fast and
works without Paddle. Known errors (`SdcError`) print one line and exit 1; anything else is a bug and
shows its traceback only with SDC_DEBUG=1.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from sdc.errors import SdcError

app = typer.Typer(
    help="sdc: compile Stable Diffusion checkpoints (diffusers format) into validated ONNX bundles, and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BundleArg = Annotated[Path, typer.Argument(help="Path of an sdc bundle (a folder ending in .bundle).")]
ProviderOpt = Annotated[str, typer.Option("--provider", help="ONNX Runtime provider: auto, cpu, cuda, tensorrt.")]


def stderr_console():
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and CI: don't fold the summary table
    return console


def finish(ok: bool, t0: float) -> None:
    """Polygraphy-style last line: status, runtime, the command itself."""
    cmd = " ".join(shlex.quote(a) for a in ["sdc", *sys.argv[1:]])
    stderr_console().print(f"{'PASSED' if ok else 'FAILED'} | Runtime: {time.perf_counter() - t0:.1f}s | Command: {cmd}")


def main() -> None:
    """Entry point: run the app, mapping known errors to one line and exit code 1."""
    try:
        app()
    except SdcError as e:
        if os.environ.get("SDC_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
