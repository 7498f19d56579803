"""`sdc compare`: the same prompts and seeds through two precisions (or targets) of one bundle, side by side."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, app, finish, stderr_console


@app.command()
def compare(
    bundle: BundleArg,
    precision: Annotated[str, typer.Option("--precision", help="The variant to judge: fp32, fp16, bf16, int8, int8-dynamic, w8.")] = "int8",
    against: Annotated[str, typer.Option("--against", help="The baseline precision.")] = "fp32",
    target: Annotated[Optional[str], typer.Option("--target", help="Artifact target of the variant (default: the one "
                                                  "tuned for the CPU provider).")] = None,
    against_target: Annotated[Optional[str], typer.Option("--against-target", help="Artifact target of the "
                                                          "baseline.")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="UTF-8 file, one prompt per line (default: 8 "
                                                    "varied prompts sdc ships, none used for calibration).")] = None,
    count: Annotated[int, typer.Option("--count", help="Use the first COUNT prompts of the file.", min=1)] = 4,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per prompt (0, 1, ...).", min=1)] = 1,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps.", min=1)] = 20,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 7.5,
    height: Annotated[Optional[int], typer.Option("--height", help="Image height (default: the bundle's).")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Image width (default: the bundle's).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Threads per variant (0: all usable CPUs).", min=0)] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the result: .json (everything) or .md (a "
                                                "'## sdc compare' section, replaced if present).")] = None,
    work: Annotated[Optional[Path], typer.Option("--work", help="Keep the images, latents and logs here.")] = None,
) -> None:
    """Generate the same prompts and seeds with two precisions (or targets) of a bundle and compare them.

    Prints, per variant, the time per image and per UNet step, peak memory and artifact size, and how far the images drift: PSNR and SSIM of the final images, and the relative error of the final latents. Each variant runs in a process of its own.
    """
    from sdc.bench.compare import CompareOptions, compare as run_compare, read_prompt_file
    from sdc.bench.compare_report import HEADING, compare_markdown, print_compare
    from sdc.bench.report import write_markdown

    t0 = time.perf_counter()
    console = stderr_console()
    if out is not None and out.suffix not in (".md", ".json"):
        from sdc.errors import InputError

        raise InputError(f"--out {out}: give a .md file (markdown section) or a .json file")
    options = CompareOptions(precision=precision, against=against, target=target, against_target=against_target,
                             prompts=read_prompt_file(prompts, count), seeds=tuple(range(seeds)), steps=steps,
                             guidance=guidance, height=height, width=width, threads=threads)
    command = " ".join(shlex.quote(a) for a in ["sdc", *sys.argv[1:]])
    result = run_compare(bundle, options, work=work, command=command, log=lambda m: console.print(f"  {m}", markup=False))
    print_compare(console, result)
    if out is not None:
        import json

        if out.suffix == ".json":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
        else:
            write_markdown(out, compare_markdown(result), heading=HEADING)
    s = result.summary()
    what = (f"compared {precision} with {against} on {len(result.agreement)} image(s)"
            + (f": PSNR {s['psnr_db_mean']:.1f} dB, SSIM {s['ssim_mean']:.3f}" if s else ""))
    finish(result.ok, t0, what)
    if not result.ok:
        raise typer.Exit(1)
