"""`sdc bench`: submodels side by side (diffusers/PyTorch, Paddle, sdc bundles), written to PERFORMANCE.md."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import stderr_console, finish, app


@app.command()
def bench(
    model_dir: Annotated[Path, typer.Argument(help="A diffusers-format Stable Diffusion folder (model_index.json).")],
    runs: Annotated[int, typer.Option("--runs", help="Timed calls per variant (median reported).", min=1)] = 3,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.", min=0)] = 1,
    height: Annotated[int, typer.Option("--height", help="Image height in pixels.")] = 512,
    width: Annotated[int, typer.Option("--width", help="Image width in pixels.")] = 512,
    components: Annotated[
        Optional[list[str]],
        typer.Option("--components", help="Submodels to time (repeatable or comma-separated): unet, text_encoder, "
                     "vae_decoder, vae_encoder; Flux: transformer, text_encoder_2 (T5). Default: "
                     "unet,text_encoder,vae_decoder (Flux: transformer,text_encoder_2,vae_decoder)."),
    ] = None,
    variants: Annotated[
        Optional[list[str]],
        typer.Option("--variants", help="What to compare (repeatable or comma-separated): torch (diffusers eager), "
                     "paddle (dygraph), sdc (bundle without passes), sdc-passes (bundle with passes, ort-cpu), "
                     "sdc-int8 (static int8, ort-cpu), sdc-int8-dynamic (int8 MatMuls, activations quantized per call), sdc-w8 "
                     "(weights-only int8). Default: torch, paddle, sdc, sdc-passes, sdc-int8."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", help="Write the results: a .md file gets (or has replaced) its '## sdc bench' "
                     "section, a .json file the full result."),
    ] = None,
    work: Annotated[
        Optional[Path],
        typer.Option("--work", help="Keep inputs, bundles, outputs and logs here; matching bundles are reused "
                     "(default: a temporary folder, removed afterwards)."),
    ] = None,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild the bundles even if --work has them.")] = False,
    bundle: Annotated[
        Optional[list[str]],
        typer.Option("--bundle", help="VARIANT=PATH (repeatable): time a bundle already built from MODEL_DIR for "
                     "that variant instead of building one, e.g. sdc-int8=out/sd15q.bundle."),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", help="Threads per variant (0: all usable CPUs).", min=0)] = 0,
    gemm_size: Annotated[int, typer.Option("--gemm-size", help="n of the n×n×n fp32 GEMM that measures the "
                                           "machine's throughput.", min=64)] = 4096,
) -> None:
    """Time submodels side by side on identical inputs: diffusers/PyTorch, Paddle, sdc bundles.

    One CFG UNet step (batch 2), the text encoder on 2 prompts of 77 tokens, the VAE decoder on one latent. Every variant runs in its own process, so peak RSS is its own. Reports medians, peak RSS, speedup over the first variant (torch, when the bench extra is installed), agreement of the outputs, FLOPs per call, the floor they imply at this machine's measured GEMM throughput, and the CPU features INT8 speed depends on.
    """
    import json

    from sdc.bench.run import BenchOptions
    from sdc.bench.run import bench as run_bench
    from sdc.bench.report import markdown_section, print_result, write_markdown
    from sdc.errors import InputError

    t0 = time.perf_counter()
    if out is not None and out.suffix not in (".md", ".json"):
        raise InputError(f"--out {out}: give a .md file (markdown section) or a .json file")
    console = stderr_console()
    given = []
    for item in bundle or ():
        variant, sep, path = item.partition("=")
        if not sep or not path:
            raise InputError(f"--bundle {item}: give VARIANT=PATH, e.g. sdc-int8=out/sd15q.bundle")
        given.append((variant, path))
    names = lambda values, default: tuple(n for v in values for n in v.replace(",", " ").split()) if values else default  # noqa: E731
    options = BenchOptions(height=height, width=width, runs=runs, warmup=warmup, threads=threads, gemm_size=gemm_size,
                           rebuild=rebuild, components=names(components, BenchOptions.components),
                           variants=names(variants, BenchOptions.variants), given=tuple(given))
    command = " ".join(shlex.quote(a) for a in ["sdc", *sys.argv[1:]])
    result = run_bench(model_dir, options, work=work, command=command,
                       log=lambda m: console.print(f"  {m}", markup=False))
    print_result(console, result)
    if out is not None:
        if out.suffix == ".json":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
        else:
            write_markdown(out, markdown_section(result))
        console.print(f"wrote {out}")
    finish(result.ok, t0, f"benchmarked {len(result.components)} submodel(s)" + (f", wrote {out}" if out else ""))
    if not result.ok:
        raise typer.Exit(1)
