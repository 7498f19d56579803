"""The `sdc` command line: build, generate, inspect, verify.

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
ProviderOpt = Annotated[str, typer.Option("--provider", help="ONNX Runtime provider: auto, cpu, cuda, tensorrt.")]


def _console():
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and CI: don't fold the summary table
    return console


def _finish(ok: bool, t0: float) -> None:
    """Polygraphy-style last line: status, runtime, the command itself."""
    cmd = " ".join(shlex.quote(a) for a in ["sdc", *sys.argv[1:]])
    _console().print(f"{'PASSED' if ok else 'FAILED'} | Runtime: {time.perf_counter() - t0:.1f}s | Command: {cmd}")


class _RichReporter:
    """One status line per stage and submodel while it runs, a checked line when it ends."""

    def __init__(self, console):
        self.console = console

    def step(self, stage: str, submodel: str):
        import contextlib

        @contextlib.contextmanager
        def cm():
            t0 = time.perf_counter()
            with self.console.status(f"{stage} {submodel} ..."):
                yield
            self.console.print(f"  [green]✓[/] {stage:10s} {submodel:16s} {time.perf_counter() - t0:7.1f}s")

        return cm()

    def log(self, message: str) -> None:
        self.console.print(f"  {message}")


@app.command()
def build(
    model_dir: Annotated[Path, typer.Argument(help="A diffusers-format Stable Diffusion folder (model_index.json).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle to write, e.g. out/sd15.bundle.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).", min=17)] = 17,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Build only these submodels (repeatable).")] = None,
    fail_on_validation: Annotated[
        bool, typer.Option("--fail-on-validation/--no-fail-on-validation", help="Fail when an artifact is off.")
    ] = True,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Load .bin/.ckpt pickle weights (runs code from the file!).")
    ] = False,
    passes: Annotated[
        bool, typer.Option("--passes/--no-passes", help="Run graph-rewrite passes (--no-passes ships the raw export).")
    ] = True,
    target: Annotated[
        Optional[list[str]],
        typer.Option("--target", help="Extra target-tuned artifact beside the portable one (repeatable): "
                     "ort-cpu, ort-cuda, tensorrt. Default: ort-cpu."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Log why each fusion pass matched nothing.")] = False,
) -> None:
    """Build a validated, checksummed bundle from a diffusers checkpoint.

    Stages per submodel: load weights, reference outputs (Paddle), trace to a static program, export
    ONNX, validate ONNX Runtime against Paddle at two shapes per dynamic axis; then write the bundle
    atomically. An artifact over tolerance fails the build.
    """
    from sdc.compile.build import build as run_build
    from sdc.compile.context import BuildOptions

    t0 = time.perf_counter()
    console = _console()
    console.print(f"[bold]sdc build[/] {model_dir} -> {out}")
    if target and not passes:
        from sdc.errors import InputError

        raise InputError(f"--target {target[0]} needs the passes that tune it; drop --no-passes or the --target")
    if debug:
        import logging

        handler = logging.StreamHandler()  # on the pass logger itself: Paddle configures the root logger
        handler.setFormatter(logging.Formatter("    %(name)s: %(message)s"))
        pass_log = logging.getLogger("sdc.passes")
        pass_log.setLevel(logging.INFO)
        pass_log.addHandler(handler)
    options = BuildOptions(opset=opset, fail_on_validation=fail_on_validation, allow_pickle=allow_pickle,
                           submodels=tuple(only) if only else None, passes=passes,
                           targets=tuple(target) if target is not None else BuildOptions.targets, debug_passes=debug)
    result = run_build(model_dir, out, options, force=force, reporter=_RichReporter(console))
    _print_summary(console, result)
    for w in result.warnings:
        console.print(f"[bold red]WARNING[/] {w}")
    _finish(not result.warnings, t0)


def _fusions(passes: dict) -> str:
    """Fused-op counts of an artifact's passes, e.g. 'MultiHeadAttention 32, Gelu 16' ('-' for none)."""
    from sdc.passes import fused_ops

    return ", ".join(f"{op} {n}" for op, n in fused_ops(passes).items()) or "-"


def _artifact_sizes(sub: dict, files: dict) -> list[int]:
    """Bytes each artifact adds to the bundle: weight files shared with an earlier artifact count once."""
    counted: set[str] = set()
    sizes = []
    for a in sub["artifacts"]:
        own = [p for p in [a["path"], *a.get("data_paths", [])] if p not in counted]
        counted.update(own)
        sizes.append(sum(files[p]["bytes"] for p in own if p in files))
    return sizes


def _print_summary(console, result) -> None:
    from rich.table import Table

    table = Table(title=f"{result.out}", show_lines=False)
    for col in ("submodel", "artifact", "size", "fusions", "max abs err", "tolerance", "status"):
        table.add_column(col, justify="right" if col in ("size", "max abs err") else "left")
    for name, sub in result.manifest["submodels"].items():
        for a, size in zip(sub["artifacts"], _artifact_sizes(sub, result.manifest["files"])):
            v = a["validation"] or {}
            table.add_row(name, f"{a['target']}/{a['precision']}", f"{size / 2**20:.1f} MiB", _fusions(a["passes"]),
                          f"{v.get('max_abs', float('nan')):.2e}", f"{v.get('atol', 0):g}+{v.get('rtol', 0):g}·|ref|",
                          "[green]ok[/]" if v.get("passed") else "[red]FAILED[/]")
    console.print(table)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    console.print(f"stage times: {times}")


@app.command()
def generate(
    bundle: BundleArg,
    prompt: Annotated[str, typer.Argument(help="Text prompt.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")] = Path("out.png"),
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Inference steps (bundle default).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (numpy).")] = None,
    height: Annotated[Optional[int], typer.Option("--height", help="Image height, a multiple of 8.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Image width, a multiple of 8.")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm, unipc, or a diffusers class name.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="Init image for image-to-image.")] = None,
    strength: Annotated[float, typer.Option("--strength", help="Image-to-image strength in (0, 1].")] = 0.8,
    latents: Annotated[Optional[Path], typer.Option("--latents", help="Initial latents (.npy) for exact reproduction.")] = None,
    provider: ProviderOpt = "auto",
    verify: Annotated[str, typer.Option("--verify", help="Checksum check on load: full (every byte), sizes (fast), none.")] = "full",
) -> None:
    """Generate an image from a bundle (ONNX Runtime; Paddle is not needed)."""
    import numpy as np
    from rich.progress import Progress

    import sdc.runtime
    from sdc.errors import InputError

    t0 = time.perf_counter()
    pipe = sdc.runtime.load(bundle, provider=provider, verify=verify)
    init = None
    if image is not None:
        from PIL import Image

        if not image.is_file():
            raise InputError(f"{image}: init image not found")
        init = Image.open(image).convert("RGB")
    lat = None
    if latents is not None:
        if not latents.is_file() or latents.suffix != ".npy":
            raise InputError(f"{latents}: expected an existing .npy file of initial latents")
        lat = np.load(latents, allow_pickle=False)
    params = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                  seed=seed, height=height, width=width, scheduler=scheduler)
    params = {k: v for k, v in params.items() if v is not None}
    with Progress(transient=True, console=_console()) as progress:
        task = progress.add_task("denoising", total=None)
        images = pipe(**params, image=init, strength=strength, latents=lat, output_type="pil",
                      callback=lambda i, n, *a: progress.update(task, completed=i + 1, total=n))
    _save_png(images[0], out, dict(params, bundle=str(bundle), strength=strength if init else None,
                                   latents=str(latents) if latents else None, image=str(image) if image else None))
    _console().print(f"wrote {out}")
    _finish(True, t0)


def _save_png(img, path: Path, params: dict) -> None:
    """PNG with the generation parameters in a text chunk, so an image says how it was made."""
    import json

    from PIL.PngImagePlugin import PngInfo

    from sdc import __version__

    info = PngInfo()
    record = {k: v for k, v in params.items() if v is not None}
    info.add_text("sdc", json.dumps(dict(record, sdc_version=__version__)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, pnginfo=info)


@app.command()
def inspect(
    bundle: BundleArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Show what a bundle holds: submodels, I/O contracts, artifacts, sizes, validation errors."""
    import json

    from sdc.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    src = manifest["source"]
    console.print(f"[bold]{bundle}[/]  {src['pipeline_class']} ({src['family']}), format v{manifest['format_version']}, "
                  f"sdc {manifest['sdc_version']}, created {manifest['created_at']}")
    d = manifest["defaults"]
    console.print(f"defaults: {d['scheduler']}, {d['width']}x{d['height']}, {d['steps']} steps, guidance {d['guidance_scale']}")
    io = Table(title="contracts")
    for col in ("submodel", "inputs", "outputs"):
        io.add_column(col)
    arts = Table(title="artifacts")
    for col in ("submodel", "artifact", "file", "size", "fusions", "max abs err"):
        arts.add_column(col, justify="right" if col in ("size", "max abs err") else "left")
    files = manifest["files"]
    for name, sub in manifest["submodels"].items():
        fmt = lambda ts: "\n".join(f"{t['name']} {t['dtype']} {t['shape']}" for t in ts)  # noqa: E731
        io.add_row(name, fmt(sub["inputs"]), fmt(sub["outputs"]))
        for a, size in zip(sub["artifacts"], _artifact_sizes(sub, files)):
            v = a.get("validation") or {}
            arts.add_row(name, f"{a['target']}/{a['precision']}", a["path"], f"{size / 2**20:.1f} MiB",
                         _fusions(a.get("passes") or {}), f"{v.get('max_abs', float('nan')):.2e}")
    console.print(io)
    console.print(arts)
    total = sum(f["bytes"] for f in manifest["files"].values())
    console.print(f"{len(manifest['files'])} files, {total / 2**20:.1f} MiB")


@app.command()
def verify(
    bundle: BundleArg,
    numerics: Annotated[bool, typer.Option("--numerics", help="Also re-run the validation inputs in ONNX Runtime.")] = False,
    provider: ProviderOpt = "cpu",
) -> None:
    """Check every file's sha256 against the manifest (and, with --numerics, the recorded outputs)."""
    from sdc.runtime.bundle import read_manifest, verify_files
    from sdc.runtime.verify import verify_numerics

    t0 = time.perf_counter()
    console = _console()
    manifest = read_manifest(bundle)
    extra = verify_files(bundle, manifest, full=True)
    console.print(f"  [green]✓[/] {len(manifest['files'])} files match their sha256")
    ok = True
    if extra:
        ok = False
        console.print(f"  [red]✗[/] files not in the manifest: {', '.join(extra)}")
    if numerics:
        for line, passed in verify_numerics(bundle, manifest, provider):
            if passed is None:  # the artifact needs a provider this machine lacks: said, not counted as passed
                console.print(f"  [yellow]-[/] {line}")
                continue
            ok &= passed
            console.print(f"  {'[green]✓[/]' if passed else '[red]✗[/]'} {line}")
    _finish(ok, t0)
    if not ok:
        raise typer.Exit(1)


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
                     "vae_decoder, vae_encoder. Default: unet,text_encoder,vae_decoder."),
    ] = None,
    variants: Annotated[
        Optional[list[str]],
        typer.Option("--variants", help="What to compare (repeatable or comma-separated): torch (diffusers eager), "
                     "paddle (dygraph), sdc (bundle without passes), sdc-passes (bundle with passes, ort-cpu). "
                     "Default: all four."),
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
    threads: Annotated[int, typer.Option("--threads", help="Threads per variant (0: all usable CPUs).", min=0)] = 0,
    gemm_size: Annotated[int, typer.Option("--gemm-size", help="n of the n×n×n fp32 GEMM that measures the "
                                           "machine's throughput.", min=64)] = 4096,
) -> None:
    """Time submodels side by side on identical inputs: diffusers/PyTorch, Paddle, sdc bundles.

    One CFG UNet step (batch 2), the text encoder on 2 prompts of 77 tokens, the VAE
    decoder on one latent. Every variant runs in its own process, so peak RSS is its own.
    Reports medians, peak RSS, speedup over the first variant (torch, when the bench
    extra is installed), agreement of the outputs, FLOPs per call, and the floor they
    imply at this machine's measured GEMM throughput.
    """
    import json

    from sdc.compile.bench import BenchOptions
    from sdc.compile.bench import bench as run_bench
    from sdc.compile.bench_report import markdown_section, print_result, write_markdown
    from sdc.errors import InputError

    t0 = time.perf_counter()
    if out is not None and out.suffix not in (".md", ".json"):
        raise InputError(f"--out {out}: give a .md file (markdown section) or a .json file")
    console = _console()
    names = lambda values, default: tuple(n for v in values for n in v.replace(",", " ").split()) if values else default  # noqa: E731
    options = BenchOptions(height=height, width=width, runs=runs, warmup=warmup, threads=threads, gemm_size=gemm_size,
                           rebuild=rebuild, components=names(components, BenchOptions.components),
                           variants=names(variants, BenchOptions.variants))
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
    _finish(result.ok, t0)
    if not result.ok:
        raise typer.Exit(1)
