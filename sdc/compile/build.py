"""`sdc build` as a function: runs the stages in order over every submodel, into a temp dir, atomically.

Stages are plain functions `stage(ctx, sub)`; this module only sequences them, times them, reports
progress, and guarantees that a failed build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sdc.compile.context import BuildContext, BuildOptions, SubmodelBuild
from sdc.compile.output import environment_error
from sdc.errors import ConfigError, SdcError

SD_SUBMODELS = ("text_encoder", "text_encoder_2", "unet", "transformer", "vae_encoder", "vae_decoder")


class Reporter:
    """Progress hooks; the CLI's rich reporter overrides these. The default prints one line per step."""

    @contextlib.contextmanager
    def step(self, stage: str, submodel: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        print(f"  {stage:10s} {submodel:16s} {time.perf_counter() - t0:6.1f}s")

    def log(self, message: str) -> None:
        print(message)


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    seconds: dict[str, float]  # per stage, all submodels together
    warnings: list[str]


def _stages() -> list[tuple[str, Callable]]:
    from sdc.compile.export import export_stage
    from sdc.compile.trace import load_stage, reference_stage, trace_stage
    from sdc.compile.validate import validate_stage

    return [("load", load_stage), ("reference", reference_stage), ("trace", trace_stage),
            ("export", export_stage), ("validate", validate_stage)]


def _run_precision(ctx: BuildContext, reporter: Reporter, seconds: dict[str, float]) -> None:
    """Calibration once, then the reduced-precision artifacts of every submodel."""
    from sdc.compile.precision import calibrate_stage, needs_calibration, precision_stage

    if needs_calibration(ctx):
        t0 = time.perf_counter()
        with reporter.step("calibrate", "pipeline"):
            calibrate_stage(ctx)
        seconds["calibrate"] = time.perf_counter() - t0
    for sub in ctx.submodels.values():
        t0 = time.perf_counter()
        with reporter.step("precision", sub.name):
            precision_stage(ctx, sub)
        dt = time.perf_counter() - t0
        sub.seconds["precision"] = dt
        seconds["precision"] = seconds.get("precision", 0.0) + dt


def plan_submodels(model_dir: Path, index, options: BuildOptions) -> list[str]:
    """Which submodels this pipeline has (vae splits into encoder and decoder)."""
    present = [n for n in SD_SUBMODELS if index.has("vae" if n.startswith("vae_") else n)]
    if options.submodels is None:
        return present
    unknown = [n for n in options.submodels if n not in present]
    if unknown:
        raise ConfigError(model_dir / "model_index.json", None, f"no submodel {', '.join(unknown)}",
                          f"this pipeline has {', '.join(present)}")
    return list(options.submodels)


def check_tokenizers(model_dir: Path, family: str, names: list[str]) -> None:
    """Read each text encoder's tokenizer as the runtime will: a bundle that cannot tokenize is not built."""
    from sdc.runtime.bundle import TOKENIZER_DIRS
    from sdc.runtime.loader import tokenizer_class

    for name in names:
        if name in TOKENIZER_DIRS:
            tokenizer_class(family, name).from_folder(model_dir / TOKENIZER_DIRS[name])


def apply_profile(model_dir: Path, family: str, profile, subs: dict) -> None:
    """Every submodel's dims under the profile (refusing sizes off the model's grid); validation at its corners."""
    import dataclasses

    from sdc.profiles import Facts, corners, submodel_dims

    facts = Facts.of(model_dir, family)
    for sub in subs.values():
        sub.profile_dims = submodel_dims(profile, sub.name, sub.spec, facts)
        sub.spec = dataclasses.replace(sub.spec, sample_dims=corners(sub.profile_dims))


def check_targets(options: BuildOptions) -> None:
    """Every artifact is validated before it ships, so a target whose graph this machine cannot run is refused."""
    from sdc.compile.validate import validation_providers
    from sdc.runtime.models import TARGET_PROVIDER
    from sdc.errors import InputError

    from sdc.runtime.precisions import parse_precisions, plan_precisions

    parse_precisions(options.precisions)
    if options.passes:  # without passes there are no tuned artifacts: `targets` is ignored
        for t in options.targets:
            if t not in TARGET_PROVIDER:
                raise InputError(f"--target {t}: unknown target; choose {', '.join(TARGET_PROVIDER)}")
            validation_providers(t)  # raises when the provider is missing
    plan_precisions(options.precisions, tuple(options.targets) if options.passes else ())
    if any(p != "fp32" for p in options.precisions):
        from sdc.compile.calibrate import check_samples, read_prompts

        check_samples(options.calibration_samples)
        read_prompts(options.calibration_prompts)


def build(model_dir: Path, out: Path, options: BuildOptions = BuildOptions(), force: bool = False,
          reporter: Reporter | None = None) -> BuildResult:
    from sdc.compile.output import OutputLock, check_output
    from sdc.graphs import folder_of
    from sdc.graphs.family import resolve_configs
    from sdc.graphs.configs import load_model_index
    from sdc.graphs.specs import spec_for
    from sdc.graphs.weights import find_weight_files

    reporter = reporter or Reporter()
    model_dir, out = Path(model_dir), Path(out)
    check_output(out, force)
    check_targets(options)
    index = load_model_index(model_dir)
    if index.family == "flux" and any(p != "fp32" for p in options.precisions):
        from sdc.errors import InputError

        raise InputError("--precision: Flux bundles are fp32 only so far (calibration needs the runtime's Flux "
                         "pipeline); build with --precision fp32")
    names = plan_submodels(model_dir, index, options)
    subs = {}
    # Parse every config first, checked against each other: a bad config fails before any slow work.
    for name, cfg in resolve_configs(model_dir, index, names).items():
        subs[name] = SubmodelBuild(name, spec_for(name, cfg), cfg)
    check_tokenizers(model_dir, index.family, names)
    if options.profile is not None:
        apply_profile(model_dir, index.family, options.profile, subs)
    weight_files = sorted({f for n in names for f in find_weight_files(model_dir / folder_of(n), options.allow_pickle)})

    import paddle  # only now: every check that can fail fast has run

    paddle.set_device("cpu")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with OutputLock(out):
            manifest, ctx, seconds = _build_locked(model_dir, out, options, force, reporter, index, subs, weight_files)
    except SdcError:
        raise
    except Exception as e:  # OSError, or C++ libraries reporting a full disk in their own exception types
        err = environment_error(e, out)
        if err is None:
            raise
        raise err from e
    return BuildResult(out, manifest, seconds, ctx.warnings)


def _build_locked(model_dir: Path, out: Path, options: BuildOptions, force: bool, reporter: Reporter, index, subs,
                  weight_files) -> tuple[dict, BuildContext, dict[str, float]]:
    """The build proper, with the output lock held: every stage into a temporary folder, then the swap."""
    from sdc.compile.bundle import bundle_stage
    from sdc.compile.p2o import release_worker, start_worker
    from sdc.compile.output import check_output, claim, remove_stale_temporaries
    from sdc.graphs.weights import weights_sha256

    check_output(out, force)  # again under the lock: a build that finished meanwhile made OUT
    removed = remove_stale_temporaries(out)
    if removed:
        reporter.log(f"removed {removed} temporary folder(s) left by killed builds of {out.name}")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    scratch = None
    try:
        claim(work)
        work.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        scratch = Path(tempfile.mkdtemp(prefix=f"sdc-build-{os.getpid()}-"))
        ctx = BuildContext(model_dir, out, work, scratch, index, options, subs, log=reporter.log)
        seconds: dict[str, float] = {}
        start_worker()  # paddle2onnx's imports overlap loading and tracing (two cores, a tiny model: seconds)
        t0 = time.perf_counter()
        ctx.weights_sha256 = weights_sha256(weight_files)
        seconds["hash"] = time.perf_counter() - t0
        for stage_name, stage in _stages():
            for sub in subs.values():
                t0 = time.perf_counter()
                with reporter.step(stage_name, sub.name):
                    stage(ctx, sub)
                dt = time.perf_counter() - t0
                sub.seconds[stage_name] = dt
                seconds[stage_name] = seconds.get(stage_name, 0.0) + dt
        for sub in subs.values():
            sub.layer = None  # free the Paddle modules before hashing gigabytes
        if options.precision_stage:
            _run_precision(ctx, reporter, seconds)
        for sub in subs.values():
            if sub.ties:
                from sdc.compile.streamed import stream_stage

                t0 = time.perf_counter()
                with reporter.step("stream", sub.name):
                    stream_stage(ctx, sub)
                sub.seconds["stream"] = time.perf_counter() - t0
                seconds["stream"] = seconds.get("stream", 0.0) + sub.seconds["stream"]
        t0 = time.perf_counter()
        with reporter.step("bundle", out.name):
            manifest = bundle_stage(ctx)
        seconds["bundle"] = time.perf_counter() - t0
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        release_worker()  # stopped unless idle and small: then the next build in this process reuses it
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return manifest, ctx, seconds


