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
from typing import Annotated, Optional

import typer

from sdc.errors import SdcError

app = typer.Typer(
    help="sdc: compile Stable Diffusion checkpoints (diffusers format) into validated ONNX bundles, and run them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BundleArg = Annotated[Path, typer.Argument(help="Path of an sdc bundle (a folder ending in .bundle).")]
ProviderOpt = Annotated[str, typer.Option("--provider", help="auto (TensorRT engines, else ONNX Runtime on CUDA, "
                                          "else CPU; says what it chose and why), tensorrt, cuda or cpu.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="fp32, fp16, bf16, int8, int8-dynamic or w8 (default: the bundle's default precision where this provider "
    "runs it, else the fastest it has).")]
TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", help="Artifact target to run: portable, ort-cpu, ort-cuda, tensorrt (default: the one tuned for "
    "the provider).")]


def stderr_console():
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and CI: don't fold the summary table
    return console


def finish(ok: bool, t0: float, what: str | None = None) -> None:
    """The last line: what the command did in plain words (when given), status and time, the command itself."""
    cmd = " ".join(shlex.quote(a) for a in ["sdc", *sys.argv[1:]])
    head = f"{what} | " if what else ""
    status = "ok" if ok else "FAILED"
    stderr_console().print(f"{head}{status} in {time.perf_counter() - t0:.1f}s | {cmd}", markup=False)


def describe_artifacts(pipe) -> None:
    """One line per submodel: which artifact the runtime chose."""
    console = stderr_console()
    if getattr(pipe, "backend", None) is not None:
        console.print(f"  backend: {pipe.backend.reason}", markup=False, soft_wrap=True)
    for name, art in pipe.artifacts.items():
        console.print(f"  {name:14s} {art['target']}/{art['precision']}  {art['path']}", markup=False)


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
