"""`sdc bench` as a function: each submodel, on identical inputs, through diffusers/PyTorch, Paddle and sdc bundles.

Inputs are drawn once with numpy and saved; every variant of a submodel reads the same file in a
process of its own (`sdc.bench.worker`), so its peak RSS is its own. Variants: `torch` (diffusers eager
fp32, optional), `paddle` (sdc's Paddle module in dygraph), `sdc` (bundle built without passes, in
ONNX Runtime) and `sdc-passes` (bundle with passes and the ort-cpu target). The result holds medians,
peak memory, speedups over the first variant that ran, agreement with its outputs, and the FLOPs floor
(graph FLOPs / measured GEMM throughput).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdc.bench.flops import GemmThroughput
from sdc.bench.prepare import (BUNDLES, MachineInfo, component_dims, ensure_bundle, given_bundle, machine_info, run_worker,
                                     write_inputs)
from sdc.errors import InputError

VARIANTS = ("torch", "paddle", "sdc", "sdc-passes", "sdc-int8", "sdc-int8-dynamic", "sdc-w8")
DEFAULT_VARIANTS = ("torch", "paddle", "sdc", "sdc-passes", "sdc-int8")
# Reduced-precision variants are not judged on the bench's random inputs: static int8 scales hold for
# the calibrated (real pipeline) distribution, and `sdc compare` measures their error on real prompts.
UNJUDGED = ("sdc-int8", "sdc-int8-dynamic", "sdc-w8")
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "transformer", "text_encoder_2")
DEFAULT_COMPONENTS = {"flux": ("transformer", "text_encoder_2", "vae_decoder")}  # others: UNet, CLIP, VAE decoder
SD_COMPONENTS = ("unet", "text_encoder", "vae_decoder")


@dataclass(frozen=True)
class BenchOptions:
    height: int = 512
    width: int = 512
    runs: int = 3  # timed calls per variant; the median is reported
    warmup: int = 1  # untimed calls first
    components: tuple[str, ...] | None = None  # None: the family's DEFAULT_COMPONENTS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    threads: int = 0  # per variant; 0: every CPU this process may use
    gemm_size: int = 4096
    gemm_repeats: int = 5
    rtol: float = 1e-3  # agreement: max|x - baseline| <= atol(spec) + rtol * max|baseline|
    rebuild: bool = False  # rebuild bundles even when the work dir has matching ones
    given: tuple[tuple[str, str], ...] = ()  # (variant, bundle path) pairs to time instead of building
    seed: int = 0


@dataclass
class VariantRun:
    variant: str
    status: str  # ok | skipped | failed
    reason: str = ""
    times: list[float] = field(default_factory=list)
    load_seconds: float = 0.0
    peak_rss_bytes: int = 0
    detail: dict = field(default_factory=dict)  # sdc variants: the artifact that ran
    max_abs_diff: float | None = None  # against the baseline variant's outputs
    agrees: bool | None = None
    speedup: float | None = None  # baseline median / this median
    floor_fraction: float | None = None  # FLOPs floor / this median

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class ComponentResult:
    name: str
    shapes: dict[str, list[int]]
    flops: float | None = None  # counted in the ONNX graph (Conv, MatMul, Gemm)
    flops_by_op: dict[str, float] = field(default_factory=dict)
    flops_analytic: float | None = None  # UNet only: from weight shapes
    floor_seconds: float | None = None  # flops / best measured GEMM FLOP/s
    baseline: str | None = None  # the variant speedups and diffs are relative to
    baseline_max_abs: float | None = None  # max |baseline output|: the scale of the diffs
    runs: list[VariantRun] = field(default_factory=list)


@dataclass
class BenchResult:
    model_dir: str
    command: str
    options: BenchOptions
    machine: MachineInfo
    gemm: GemmThroughput | None
    components: list[ComponentResult]
    notes: list[str]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every variant that could run did, and agrees with the baseline."""
        return all(r.status != "failed" and r.agrees is not False for c in self.components for r in c.runs)

    def to_json(self) -> dict:
        return asdict(self)


def _check(model_dir: Path, options: BenchOptions) -> BenchOptions:
    """The options, checked, with the family's default components filled in."""
    import dataclasses

    from sdc.graphs.configs import load_model_index

    index = load_model_index(model_dir)
    if options.components is None:
        options = dataclasses.replace(options, components=DEFAULT_COMPONENTS.get(index.family, SD_COMPONENTS))
    bad = [v for v in options.variants if v not in VARIANTS]
    if bad or not options.variants:
        raise InputError(f"--variants {' '.join(bad) or '(none)'}: choose from {', '.join(VARIANTS)}")
    for variant, path in options.given:
        if variant not in BUNDLES or variant not in options.variants:
            raise InputError(f"--bundle {variant}={path}: {variant} is not an sdc variant of this run; choose from "
                             f"{', '.join(v for v in options.variants if v in BUNDLES)}")
    bad = [c for c in options.components if c not in COMPONENTS]
    if bad or not options.components:
        raise InputError(f"--components {' '.join(bad) or '(none)'}: choose from {', '.join(COMPONENTS)}")
    if options.runs < 1 or options.warmup < 0:
        raise InputError(f"--runs {options.runs} --warmup {options.warmup}: need runs >= 1 and warmup >= 0")
    missing = [c for c in options.components if not index.has("vae" if c.startswith("vae_") else c)]
    if missing:
        raise InputError(f"{model_dir / 'model_index.json'}: no {', '.join(missing)}; drop it from --components")
    return options


def measure_gemm(options: BenchOptions, work: Path, threads: int, log: Callable[[str], None]) -> GemmThroughput | None:
    """fp32 GEMM FLOP/s of numpy and of ONNX Runtime, each in its own process (None if either fails)."""
    log(f"measuring fp32 GEMM throughput ({options.gemm_size}^3, median of {options.gemm_repeats})")
    measured = {}
    for lib in ("numpy", "ort"):
        task = {"kind": "gemm", "library": lib, "size": options.gemm_size, "repeats": options.gemm_repeats}
        r = run_worker(task, work / "logs", f"gemm-{lib}", threads)
        if r["status"] != "ok":
            log(f"GEMM throughput of {lib} not measured: {r.get('reason')}")
            return None
        measured[lib] = r["flops_per_s"]
    return GemmThroughput(options.gemm_size, options.gemm_repeats, measured["numpy"], measured["ort"])


def count_flops(bundle: Path, comp: ComponentResult, dims: dict[str, int], model_dir: Path) -> None:
    """Graph FLOPs from the bundle's portable artifact; the UNet's also analytically."""
    from sdc.bench.flops import graph_flops, unet_flops_analytic
    from sdc.runtime.bundle import read_manifest, safe_join
    from sdc.runtime.loader import choose_artifact

    art = choose_artifact(read_manifest(bundle)["submodels"][comp.name], comp.name, "portable")
    counted = graph_flops(safe_join(bundle, art["path"]), dims)
    comp.flops, comp.flops_by_op = counted.total, counted.by_op
    if comp.name == "unet":
        comp.flops_analytic = unet_flops_analytic(
            model_dir, dims["batch"], (dims["latent_height"], dims["latent_width"]), dims["sequence"])


def compare(comp: ComponentResult, outputs: dict[str, dict[str, np.ndarray]], atol: float, rtol: float) -> None:
    """Speedups and max abs differences against the first variant that ran."""
    ok = [r for r in comp.runs if r.status == "ok"]
    if not ok:
        return
    base = ok[0]
    comp.baseline = base.variant
    ref = outputs[base.variant]
    for r in ok:
        r.speedup = base.median / r.median
        if comp.floor_seconds:
            r.floor_fraction = comp.floor_seconds / r.median
        common = [k for k in ref if k in outputs[r.variant]]
        scale = max(float(np.abs(ref[k]).max()) for k in common)
        r.max_abs_diff = max(float(np.abs(outputs[r.variant][k] - ref[k]).max()) for k in common)
        r.agrees = None if r.variant in UNJUDGED else r.max_abs_diff <= atol + rtol * scale
        comp.baseline_max_abs = scale


def same_graph_note(components: list[ComponentResult]) -> list[str]:
    """Say plainly when `sdc-passes` ran the very graph `sdc` ran: then its numbers measure noise, not passes."""
    notes = []
    for c in components:
        runs = {r.variant: r for r in c.runs if r.status == "ok"}
        if "sdc" in runs and "sdc-passes" in runs:
            a, b = runs["sdc"].detail, runs["sdc-passes"].detail
            if a.get("sha256") == b.get("sha256"):
                notes.append(f"{c.name}: sdc-passes ran the same graph as sdc ({b.get('artifact')}, identical sha256): "
                             "the passes changed nothing here")
    return notes


def bench(model_dir: Path, options: BenchOptions = BenchOptions(), work: Path | None = None, command: str = "",
          log: Callable[[str], None] = print) -> BenchResult:
    from sdc.graphs.family import pipeline_config
    from sdc.graphs.specs import spec_for

    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    options = _check(model_dir, options)
    threads = options.threads or len(os.sched_getaffinity(0))
    machine = machine_info()
    temporary = work is None
    work = Path(tempfile.mkdtemp(prefix="sdc-bench-")) if work is None else Path(work)
    try:
        dims = component_dims(model_dir, options.height, options.width, options.components)
        inputs = write_inputs(model_dir, dims, work / "inputs", options.seed)
        specs = {c: spec_for(c, pipeline_config(model_dir, c)) for c in options.components}
        comps = []
        for c in dims:
            with np.load(inputs[c]) as z:
                comps.append(ComponentResult(c, {k: list(z[k].shape) for k in z.files}))
        notes: list[str] = []
        bundles = _bundles(model_dir, options, work, threads, notes, log)
        gemm = _floor(comps, bundles, dims, model_dir, options, work, threads, notes, log)
        for comp in comps:
            outputs = {}
            for v in options.variants:
                run = _time_one(model_dir, comp.name, v, bundles, inputs[comp.name], work, options, threads)
                comp.runs.append(run)
                if run.status == "ok":
                    with np.load(work / "runs" / comp.name / f"{v}.npz") as z:
                        outputs[v] = {k: z[k] for k in z.files}
                log(_progress_line(comp.name, run))
            compare(comp, outputs, specs[comp.name].atol, options.rtol)
        notes += same_graph_note(comps)
        machine.load_after = os.getloadavg()
        return BenchResult(str(model_dir), command, options, machine, gemm, comps, notes,
                           time.perf_counter() - t_start)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _bundles(model_dir: Path, options: BenchOptions, work: Path, threads: int, notes: list[str],
             log: Callable[[str], None]) -> dict[str, Path]:
    """The bundle of each sdc variant that has one (a failed build is a note, and that variant fails)."""
    from sdc.graphs import folder_of
    from sdc.graphs.weights import find_weight_files, weights_sha256

    sdc_variants = [v for v in options.variants if v in BUNDLES]
    if not sdc_variants:
        return {}
    weights = weights_sha256({f for c in options.components for f in find_weight_files(model_dir / folder_of(c))})
    bundles = {}
    for v in sdc_variants:
        given = dict(options.given).get(v)
        if given is not None:
            path, note = given_bundle(model_dir, v, Path(given))
        else:
            path, note = ensure_bundle(model_dir, v, options.components, work, weights, threads, options.rebuild, log)
        notes.append(note)
        log(note)
        if path is not None:
            bundles[v] = path
    return bundles


def _floor(comps: list[ComponentResult], bundles: dict[str, Path], dims: dict[str, dict[str, int]], model_dir: Path,
           options: BenchOptions, work: Path, threads: int, notes: list[str],
           log: Callable[[str], None]) -> GemmThroughput | None:
    """FLOPs per component (from the unpassed bundle's graphs) and the GEMM speed that turns them into a floor."""
    if not bundles:
        notes.append("no sdc bundle: FLOPs and the GEMM floor are not measured")
        return None
    source = bundles.get("sdc") or next(iter(bundles.values()))
    for comp in comps:
        try:
            count_flops(source, comp, dims[comp.name], model_dir)
        except Exception as e:  # a count that fails must not sink the timings
            notes.append(f"{comp.name}: FLOPs not counted ({type(e).__name__}: {e})")
    gemm = measure_gemm(options, work, threads, log)
    if gemm is None:
        notes.append(f"GEMM throughput not measured (logs in {work / 'logs'}): no floor")
    for comp in comps:
        comp.floor_seconds = comp.flops / gemm.best if comp.flops and gemm else None
    return gemm


def _time_one(model_dir: Path, name: str, variant: str, bundles: dict[str, Path], inputs: Path, work: Path,
              options: BenchOptions, threads: int) -> VariantRun:
    if variant in BUNDLES and variant not in bundles:
        return VariantRun(variant, "failed", "its bundle failed to build (see notes)")
    folder = work / "runs" / name
    task = {"kind": "time", "variant": variant, "component": name, "model_dir": str(model_dir),
            "bundle": str(bundles.get(variant, "")), "inputs": str(inputs), "outputs": str(folder / f"{variant}.npz"),
            "runs": options.runs, "warmup": options.warmup,
            "precision": BUNDLES[variant][2][0] if variant in BUNDLES else "fp32",
            # the variant's artifact, also when one given bundle (--bundle) serves several variants
            "target": (BUNDLES[variant][1] or ("portable",))[0] if variant in BUNDLES else None}
    r = run_worker(task, folder, variant, threads)
    return VariantRun(variant, r["status"], r.get("reason", ""), r.get("times", []), r.get("load_seconds", 0.0),
                      r.get("peak_rss_bytes", 0), r.get("detail", {}))


def _progress_line(name: str, run: VariantRun) -> str:
    if run.status != "ok":
        return f"{name:12s} {run.variant:10s} {run.status}: {run.reason}"
    return (f"{name:12s} {run.variant:10s} median {run.median:8.3f}s of {len(run.times)}, "
            f"peak RSS {run.peak_rss_bytes / 2**30:.2f} GiB")
