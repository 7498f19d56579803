"""`sdc build`: a diffusers folder to a validated bundle, with one progress line per stage and a summary table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import stderr_console, finish, app


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
        typer.Option("--target", help="Extra target-tuned artifact beside the portable one (repeatable or a "
                     "comma list): ort-cpu, ort-cuda, tensorrt. Default: ort-cpu."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Log why each fusion pass matched nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the warnings and logs of Paddle, onnxscript and "
                                          "ONNX Runtime (hidden by default).")] = False,
    precision: Annotated[
        str, typer.Option("--precision", help="Comma list of precisions to ship, the first is the bundle's default: "
                          "fp32, fp16, bf16 (GPU targets: ort-cuda, tensorrt), int8 (static, calibrated: ort-cpu, "
                          "tensorrt), int8-dynamic (int8 MatMuls, activations quantized per call, no calibration: ort-cpu), "
                          "w8 (weights-only int8: ort-cpu, tensorrt).")
    ] = "fp32",
    calibration_prompts: Annotated[
        Optional[Path], typer.Option("--calibration-prompts", help="UTF-8 text file, one prompt per line, for INT8 "
                                     "calibration and fp16 range measurement (default: sdc's 72 varied prompts).")
    ] = None,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="UNet inputs captured across the timesteps of real "
                          "sampling runs for the INT8 scales (8: one 8-step run; more add runs of 8 with other prompts).")
    ] = 8,
    stream_weights: Annotated[
        str, typer.Option("--stream-weights", help="Flux transformer / T5: export from a depth-tied module and stream "
                          "every block's weights from the checkpoint into the bundle (its dtype, e.g. bf16), so the "
                          "fp32 model never sits in memory. auto: when its fp32 weights exceed half of this machine's "
                          "memory; on; off.")
    ] = "auto",
    profile: Annotated[
        Optional[str], typer.Option("--profile", help="Sizes the bundle serves: a name (sd-512, sd-dynamic, sdxl-1024, "
                                    "flux-512-1024), HxW (static) or MIN:OPT:MAX like 256x256:512x512:1024x768. Every "
                                    "graph is validated at its corners, INT8 calibrated at its optimum; recorded in the "
                                    "manifest for TensorRT engines.")
    ] = None,
    batch: Annotated[
        Optional[str], typer.Option("--batch", help="With --profile: images per call, N or MIN:OPT:MAX like 1:2:4 "
                                    "(default 1, or the named profile's).")
    ] = None,
    text_length: Annotated[
        Optional[str], typer.Option("--text-length", help="With --profile, Flux: T5 tokens, N or MIN:OPT:MAX "
                                    "(default 512).")
    ] = None,
) -> None:
    """Build a validated, checksummed bundle from a diffusers checkpoint.

    Stages per submodel: load weights, reference outputs (Paddle), trace to a static program, export ONNX, validate ONNX Runtime against Paddle at two shapes per dynamic axis. Reduced precisions (--precision) are then calibrated on real pipeline runs, converted and validated. The bundle is written atomically; an artifact over tolerance fails the build.
    """
    from sdc.compile.build import build as run_build
    from sdc.compile.context import BuildOptions
    from sdc.runtime.precisions import parse_precisions

    t0 = time.perf_counter()
    console = stderr_console()
    console.print(f"[bold]sdc build[/] {model_dir} -> {out}")
    if target is not None:  # `--target ort-cpu,tensorrt` as `--precision` takes its list
        target = [t.strip() for item in target for t in item.split(",") if t.strip()]
    if target and not passes:
        from sdc.errors import InputError

        raise InputError(f"--target {target[0]} needs the passes that tune it; drop --no-passes or the --target")
    if stream_weights not in ("auto", "on", "off"):
        from sdc.errors import InputError

        raise InputError(f"--stream-weights {stream_weights}: choose auto, on or off")
    shape_profile = None
    if profile is not None:
        from sdc.graphs.configs import load_model_index
        from sdc.profiles import parse_profile

        shape_profile = parse_profile(profile, batch, load_model_index(model_dir).family, text_length)
    elif batch is not None or text_length is not None:
        from sdc.errors import InputError

        raise InputError("--batch and --text-length shape a --profile; give one (e.g. --profile 512x512 --batch 1:2:4)")
    if not verbose:
        quiet_third_parties()
    if debug:
        import logging

        handler = logging.StreamHandler()  # on the pass logger itself: Paddle configures the root logger
        handler.setFormatter(logging.Formatter("    %(name)s: %(message)s"))
        pass_log = logging.getLogger("sdc.passes")
        pass_log.setLevel(logging.INFO)
        pass_log.addHandler(handler)
        pass_log.propagate = False  # else Paddle's root handler prints every line a second time
    options = BuildOptions(opset=opset, fail_on_validation=fail_on_validation, allow_pickle=allow_pickle,
                           submodels=tuple(only) if only else None, passes=passes,
                           targets=tuple(target) if target is not None else BuildOptions.targets, debug_passes=debug,
                           precisions=parse_precisions(precision), calibration_prompts=calibration_prompts,
                           calibration_samples=calibration_samples, stream_weights=stream_weights,
                           profile=shape_profile)
    result = run_build(model_dir, out, options, force=force, reporter=_RichReporter(console))
    _print_summary(console, result)
    for w in result.warnings:
        console.print(f"[bold red]WARNING[/] {w}")
    if target and "tensorrt" in target and not result.warnings:
        _engines_after_build(console, result.out, result.manifest)
    n = sum(len(s["artifacts"]) for s in result.manifest["submodels"].values())
    size = sum(f["bytes"] for f in result.manifest["files"].values())
    finish(not result.warnings, t0, f"built {result.out}: {n} artifacts of {len(result.manifest['submodels'])} "
           f"submodels, {size / 2**20:.1f} MiB" + (f", {len(result.warnings)} warning(s)" if result.warnings else ""))


def _engines_after_build(console, out: Path, manifest: dict) -> None:
    """`--target tensorrt`: build the engines too where TensorRT and a GPU are here, else say where to."""
    from sdc.runtime.backend import tensorrt_here

    env = tensorrt_here()
    if isinstance(env, str):
        console.print(f"engines: not built here ({env.split(' (')[0]}); run `sdc engines build {out}` on the GPU "
                      "host that will serve them", markup=False, soft_wrap=True)
        return
    if not manifest.get("profiles"):
        console.print(f"engines: not built (they need a shape profile: rebuild with --profile, or run "
                      f"`sdc engines build {out} --profile ...`)", markup=False, soft_wrap=True)
        return
    from sdc.engines import BuilderSettings
    from sdc.engines.install import add_engines
    from sdc.engines.tensorrt import build_plan

    add_engines(out, manifest["profiles"][0], BuilderSettings(), env, build_plan,
                progress=lambda line: console.print(line, markup=False))


def quiet_third_parties() -> None:
    """Keep third-party chatter out of sdc's output: Paddle's glog lines and ccache warning, onnxscript's
    constant-folding notes, onnxruntime.quantization's advice (all harmless here; --verbose shows them)."""
    import logging
    import os
    import warnings

    os.environ.setdefault("GLOG_minloglevel", "2")  # read when paddle is first imported
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message=r"(?s).*Non compatible API")  # the message starts with a newline
    for name in ("onnxscript", "onnx_ir", "onnxruntime", "paddle", "paddle2onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def precision_text(artifact: dict) -> str:
    """What the precision stage did to an artifact, in a few words ('-' for fp32)."""
    r = artifact.get("precision_record") or {}
    if "islands" in r:
        return f"{len(r['islands'])} fp32 islands"
    if "quantized_ops" in r:
        ops = ", ".join(f"{op} {n}" for op, n in r["quantized_ops"].items())
        float_ = len((r.get("sensitivity") or {}).get("excluded", []))
        return f"{ops} int8" + (f"; {float_} kept float" if "sensitivity" in r else "")
    return "-"


def fusions_text(passes: dict) -> str:
    """Fused-op counts of an artifact's passes, e.g. 'MultiHeadAttention 32, Gelu 16' ('-' for none)."""
    from sdc.passes import fused_ops

    return ", ".join(f"{op} {n}" for op, n in fused_ops(passes).items()) or "-"


def artifact_sizes(sub: dict, files: dict) -> list[int]:
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
    for col in ("submodel", "artifact", "size", "fusions", "precision", "max abs err", "held-out rel", "tolerance",
                "status"):
        table.add_column(col, justify="right" if col in ("size", "max abs err", "held-out rel") else "left")
    for name, sub in result.manifest["submodels"].items():
        for a, size in zip(sub["artifacts"], artifact_sizes(sub, result.manifest["files"])):
            v = a["validation"] or {}
            held = (v.get("holdout") or {}).get("max_rel")
            table.add_row(name, f"{a['target']}/{a['precision']}", f"{size / 2**20:.1f} MiB", fusions_text(a["passes"]),
                          precision_text(a), f"{v.get('max_abs', float('nan')):.2e}",
                          "-" if held is None else f"{held:.2e}", f"{v.get('atol', 0):g}+{v.get('rtol', 0):g}·|ref|",
                          "[green]ok[/]" if v.get("passed") else "[red]FAILED[/]")
    console.print(table)
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    console.print(f"stage times: {times}")
