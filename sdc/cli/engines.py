"""`sdc engines build`: add TensorRT engines to an existing bundle, in place and atomically (see sdc.engines)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, app, finish, stderr_console

engines_app = typer.Typer(help="TensorRT engines of a bundle (built on the GPU host that runs them).",
                          no_args_is_help=True)
app.add_typer(engines_app, name="engines")


@engines_app.command("build")
def build_engines(
    bundle: BundleArg,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Shape profile: one the bundle records "
                                                   "(default: its first), a name (sd-512, sd-dynamic, sdxl-1024, "
                                                   "flux-512-1024) or HxW[:HxW:HxW].")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="Images per call, N or MIN:OPT:MAX (with --profile).")] = None,
    text_length: Annotated[Optional[str], typer.Option("--text-length", help="Flux: T5 tokens, N or MIN:OPT:MAX.")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="Which of the bundle's precisions the "
                                                     "engines run (default: the bundle's default).")] = None,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Build only this submodel's engine (repeatable).")] = None,
    optimization_level: Annotated[int, typer.Option("--optimization-level", min=0, max=5,
                                                    help="TensorRT builder optimization level (0-5).")] = 3,
    workspace_mib: Annotated[int, typer.Option("--workspace-mib", min=1, help="TensorRT workspace limit, MiB.")] = 4096,
    strip: Annotated[bool, typer.Option("--strip/--no-strip", help="Weight-stripped plans, refit from the bundle's "
                                        "ONNX weights on load (default), or plans that carry their weights.")] = True,
) -> None:
    """Build one TensorRT engine per submodel into BUNDLE/engines/<key>/, for this machine's GPU and TensorRT.

    The bundle is changed in one step at the end (its manifest lists each engine with the facts of its key
    and its sha256); engines of other GPUs stay. Needs TensorRT, cuda-python and a GPU; without them it stops
    with one line and leaves the bundle as it was.
    """
    from sdc.engines import BuilderSettings, probe
    from sdc.engines.install import add_engines
    from sdc.profiles import bundle_profile
    from sdc.runtime.bundle import read_manifest

    t0 = time.perf_counter()
    console = stderr_console()
    manifest = read_manifest(bundle)  # a bad bundle fails first, with its own message
    chosen = bundle_profile(manifest, profile, batch, text_length)  # refuses a bundle without a profile, bad sizes
    env = probe()  # raises with what is missing
    from sdc.engines.tensorrt import build_plan

    settings = BuilderSettings(optimization_level, workspace_mib, strip)
    console.print(f"[bold]sdc engines build[/] {bundle}: TensorRT {env.tensorrt} on {env.gpu_name} "
                  f"(sm {env.compute_capability}), profile {chosen['name']}")
    if chosen not in (manifest.get("profiles") or []):
        console.print(f"note: the build validated its graphs at {', '.join(p['name'] for p in manifest.get('profiles') or [])}"
                      f" corners, not at {chosen['name']}'s; rebuild with --profile {chosen['name']} to validate "
                      "what these engines serve", markup=False, soft_wrap=True)
    entries = add_engines(Path(bundle), chosen, settings, env, build_plan, precision, only,
                          progress=lambda line: console.print(line, markup=False))
    finish(True, t0, f"added {len(entries)} engine(s) to {bundle}" if entries else f"{bundle}: engines up to date")


def engines_text(manifest: dict) -> list[str]:
    """One line per engine of the bundle, saying whether this machine can load it (for `sdc inspect`)."""
    from sdc.engines import check_can_use
    from sdc.runtime.backend import tensorrt_here

    entries = [e for s in manifest["submodels"].values() for e in s.get("engines", [])]
    if not entries:
        return []
    env = tensorrt_here()
    lines = []
    for e in entries:
        env_of = e["environment"]
        usable = env if isinstance(env, str) else (check_can_use(e, env, manifest) or "yes")
        lines.append(f"engine {e['submodel']} {e['precision']} {e['path']} ({e['bytes'] / 2**20:.1f} MiB): "
                     f"TensorRT {env_of['tensorrt']}, {env_of['gpu_name']} sm {env_of['compute_capability']}, "
                     f"CUDA {env_of['cuda_major']}, profile {e['profile']}; usable here: {usable}")
    return lines
