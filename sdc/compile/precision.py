"""Stage `precision`: fp16 / bf16 / int8 / w8 artifacts from each target's fp32 graph, validated and recorded.

Runs after every fp32 artifact exists and passed validation. When a reduced precision is asked
for and the build holds the whole pipeline, calibration data is captured once (sdc.compile.calibrate):
INT8 scales come from it, fp16 islands are measured on it, and every reduced-precision artifact is
checked on its held-out run against the fp32 graph, besides the build's Paddle reference cases.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sdc.compile.context import Artifact, BuildContext, SubmodelBuild, Validation
from sdc.errors import ValidationError
from sdc.runtime.bundle import model_path
from sdc.runtime.emulate import model_bytes

# (atol, rtol) per precision: pass when max|x - ref| <= atol + rtol * max|ref| on every output.
# Measured on the committed fixtures and the random-weight SD 1.5 (docs/PERFORMANCE.md); each is
# about twice the worst error seen there, not looser.
TOLERANCE = {
    "fp16": {"text_encoder": (1e-3, 4e-3), "unet": (1e-3, 6e-3), "vae_encoder": (1e-3, 5e-3),
             "vae_decoder": (1e-3, 5e-3)},
    "bf16": {"text_encoder": (1e-2, 4e-2), "unet": (1e-2, 5e-2), "vae_encoder": (1e-2, 4e-2),
             "vae_decoder": (1e-2, 4e-2)},
    "int8": {"text_encoder": (1e-2, 1e-1), "unet": (1e-2, 2e-1), "vae_encoder": (1e-2, 2e-1),
             "vae_decoder": (1e-2, 1.5e-1)},
    # int8-dynamic: worst seen 6.6% held-out (real-size SDXL text_encoder_2), 6.1% (sd2-tiny UNet)
    "int8-dynamic": {"text_encoder": (1e-2, 1e-1), "unet": (1e-2, 1e-1), "vae_encoder": (1e-2, 1e-1),
                     "vae_decoder": (1e-2, 1e-1)},
    "w8": {"text_encoder": (1e-3, 8e-2), "unet": (1e-3, 8e-2), "vae_encoder": (1e-3, 8e-2),
           "vae_decoder": (1e-3, 8e-2)},
}
RANGE_CASES = 8  # calibration inputs the fp16 ranges are measured on (spread over the timesteps)
REFINE_ROUNDS = 4
REFINE_FRACTION = 0.02  # of the graph's nodes made fp32 per refinement round


def tolerance(precision: str, submodel: str) -> tuple[float, float]:
    table = TOLERANCE[precision]
    return table.get(submodel, table["text_encoder" if submodel.startswith("text_encoder") else "unet"])


def needs_calibration(ctx: BuildContext) -> bool:
    return any(p != "fp32" for p in ctx.options.precisions)


def calibrate_stage(ctx: BuildContext) -> None:
    """Capture calibration data through the fp32 portable artifacts (once per build)."""
    from sdc.compile.calibrate import capture, needed_submodels

    have = set(ctx.submodels)
    needs_int8 = any(p == "int8" for p in ctx.options.precisions)
    if not set(needed_submodels(ctx.index)) <= have:
        if needs_int8:
            capture(ctx.model_dir, {}, {}, ctx.options.calibration_prompts, ctx.options.calibration_samples)  # raises
        ctx.log("no calibration run: the build lacks part of the pipeline; fp16 ranges use the validation inputs")
        return
    # Each submodel runs the graph its first int8 artifact is quantized from, so the min/max observed on
    # the way are that graph's ranges; without static int8, the graph the first reduced precision is made
    # from, whose held-out outputs validation then finds recorded (else the portable graph, which every
    # target validated against).
    arts, observe = {}, ()
    plan = _plan(ctx)
    int8_targets = plan.get("int8", ())
    low_targets = int8_targets + tuple(t for p, ts in plan.items() if p not in ("fp32", "int8") for t in ts)
    for n, sub in ctx.submodels.items():
        base = {a.target: a for a in sub.artifacts if a.precision == "fp32"}
        art = next((base[t] for t in low_targets if t in base), base["portable"])
        arts[n] = ctx.work / art.path
    if int8_targets:
        observe = tuple(ctx.submodels)
    specs = {n: s.spec.to_json() for n, s in ctx.submodels.items()}
    profile = ctx.options.profile  # calibrate at the size the bundle will serve most
    size = (profile.height.opt, profile.width.opt) if profile is not None else None
    ctx.calibration = capture(ctx.model_dir, arts, specs, ctx.options.calibration_prompts,
                              ctx.options.calibration_samples, log=ctx.log, observe=observe, size=size)


def _plan(ctx: BuildContext) -> dict[str, tuple[str, ...]]:
    from sdc.runtime.precisions import plan_precisions

    return plan_precisions(ctx.options.precisions, tuple(ctx.options.targets) if ctx.options.passes else ())


def precision_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    """Every reduced-precision artifact of one submodel, for each target that runs that precision."""
    plan = _plan(ctx)
    fp32 = {a.target: a for a in sub.artifacts if a.precision == "fp32"}
    for precision, targets in plan.items():
        if precision == "fp32":
            continue
        for target in targets:
            base = fp32.get(target) or fp32["portable"]  # no fusion applied: the portable graph is the target's
            t0 = time.perf_counter()
            art = _builder(precision)(ctx, sub, base, target, precision)
            validate_low(ctx, sub, art, base)
            sub.artifacts.append(art)
            ctx.log(f"{sub.name} {target}/{precision}: {time.perf_counter() - t0:.1f}s, "
                    f"max abs err {art.validation.max_abs:.2e} (vs Paddle), "
                    f"{_holdout_text(art.validation)}")
    if "fp32" not in ctx.options.precisions:  # the tuned fp32 graphs were only the starting point
        sub.artifacts = [a for a in sub.artifacts if a.precision != "fp32" or a.target == "portable"]
        for a in fp32.values():
            if a.target != "portable":
                (ctx.work / a.path).unlink(missing_ok=True)


def _holdout_text(v: Validation) -> str:
    h = v.holdout
    return "no held-out inputs" if h is None else f"{h['max_rel']:.2e} rel on held-out pipeline inputs (vs fp32)"


# ---------------------------------------------------------------- builders


def _save(ctx: BuildContext, sub: SubmodelBuild, model, target: str, precision: str) -> Artifact:
    from sdc.compile.artifacts import save_onnx

    rel = model_path(sub.name, target, precision)
    big = model_bytes(model) > ctx.options.external_data_threshold if hasattr(model, "ByteSize") else True
    data = save_onnx(model, ctx.work / rel, external=big)
    return Artifact(target, precision, rel, data_paths=[f"{sub.name}/{data}"] if data else [])


def _cases_for_ranges(ctx: BuildContext, sub: SubmodelBuild) -> tuple[list[dict], str]:
    cal = ctx.calibration
    if cal is not None and cal.calibration.get(sub.name):
        items = cal.calibration[sub.name]
        step = max(1, len(items) // RANGE_CASES)
        return items[::step][:RANGE_CASES], f"{min(len(items), RANGE_CASES)} calibration inputs"
    return [inputs for _, inputs, _ in sub.references], f"{len(sub.references)} build validation inputs"


def build_low_float(ctx: BuildContext, sub: SubmodelBuild, base: Artifact, target: str, precision: str) -> Artifact:
    """fp16/bf16: islands from practice, measured ranges and (if needed) measured error; then convert."""
    import onnx

    from sdc.compile import islands as isl
    from sdc.passes.onnx.float16 import convert, name_nodes, unsupported_nodes

    src = ctx.work / base.path

    def fresh():
        m = onnx.load(str(src))
        name_nodes(m)
        return m

    model = fresh()
    named_src = ctx.scratch / sub.name / f"{target}.named.onnx"  # node names as the islands refer to them
    named_src.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(named_src), save_as_external_data=True, location=named_src.name + ".data")
    observed = _observed(ctx, sub, base)
    if observed is not None:
        ranges, cases_label = observed.absmax(), f"{observed.runs} calibration runs of the graph (observed while calibrating)"
    else:
        cases, cases_label = _cases_for_ranges(ctx, sub)
        ranges = isl.measure_ranges(named_src, cases, ctx.scratch)
    unsupported = [isl.Island(n, op, "no kernel: " + why) for n, (op, why) in
                   ((k, (next(x.op_type for x in model.graph.node if x.name == k), v))
                    for k, v in unsupported_nodes(model, precision).items())]
    chosen = isl.merge(isl.practice_islands(model), isl.range_islands(model, ranges), unsupported)
    del model
    atol, rtol = tolerance(precision, sub.name)
    record = {"ranges_measured_on": cases_label, "safe_fraction": isl.SAFE_FRACTION, "refinement_rounds": 0}
    converted = None
    for round_ in range(REFINE_ROUNDS + 1):
        converted, counts = convert(fresh(), precision, {i.node for i in chosen})
        err = _worst_relative(ctx, sub, converted, named_src)
        if err is None or err <= _rel_limit(atol, rtol, sub) or round_ == REFINE_ROUNDS:
            break
        # Over tolerance: make the nodes that amplify the error most fp32, on the smallest case.
        case = min((inputs for _, inputs, _ in sub.references), key=lambda c: sum(a.size for a in c.values()))
        ranked = isl.amplifiers(named_src, converted, case, ctx.scratch, {i.node for i in chosen})
        k = max(1, int(REFINE_FRACTION * len(ranked)))
        chosen += [isl.Island(n, op, f"error: amplified the {precision} error {amp:.3g}x (to {e:.2e} relative) "
                              f"in refinement round {round_ + 1}", e) for n, op, amp, e in ranked[:k]]
        record["refinement_rounds"] = round_ + 1
        ctx.log(f"{sub.name} {target}/{precision}: relative error {err:.2e} over tolerance; "
                f"{k} more node(s) kept fp32")
    record.update(islands=[i.to_json() for i in chosen], counts=counts,
                  island_ops=_count_ops(chosen), converter="onnxruntime.transformers.float16")
    art = _save(ctx, sub, converted, target, precision)
    art.passes = dict(base.passes, **{f"precision-{precision}": counts})
    art.precision_record = record
    return art


def _observed(ctx: BuildContext, sub: SubmodelBuild, base: Artifact):
    """The ranges the calibration runs observed on `base`'s graph, if they ran that graph."""
    cal = ctx.calibration
    r = cal.ranges.get(sub.name) if cal is not None else None
    return r if r is not None and Path(r.graph) == ctx.work / base.path else None


def _count_ops(chosen) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in chosen:
        out[i.op] = out.get(i.op, 0) + 1
    return out


def _rel_limit(atol: float, rtol: float, sub: SubmodelBuild) -> float:
    """The tolerance as a fraction of the reference scale (for the refinement loop's yes/no)."""
    scale = max(float(np.max(np.abs(o))) for _, _, outs in sub.references for o in outs.values())
    return (atol + rtol * scale) / scale if scale > 0 else atol


def _worst_relative(ctx: BuildContext, sub: SubmodelBuild, low_model, named_src: Path) -> float | None:
    """max|emulated - paddle| / max|paddle| over the build cases."""
    from sdc.runtime.emulate import emulated_session_of

    session = emulated_session_of(low_model, ctx.scratch)
    worst = 0.0
    for _, inputs, expected in sub.references:
        outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        for name, ref in expected.items():
            scale = float(np.max(np.abs(ref))) or 1.0
            err = float(np.max(np.abs(outs[name].astype(np.float64) - ref)))
            worst = max(worst, err / scale if np.isfinite(err) else float("inf"))
    return worst


def _builder(precision: str):
    from sdc.compile import precision_int8

    return {"fp16": build_low_float, "bf16": build_low_float, "int8": precision_int8.build_int8,
            "int8-dynamic": precision_int8.build_int8_dynamic, "w8": precision_int8.build_w8}[precision]


# ---------------------------------------------------------------- validation


def validate_low(ctx: BuildContext, sub: SubmodelBuild, art: Artifact, base: Artifact) -> None:
    """The build's Paddle cases, plus the held-out pipeline inputs against the fp32 artifact."""
    from sdc.compile.validate import compare, report_failure
    from sdc.passes.onnx.qdq import VALIDATE_FUSED
    from sdc.runtime.emulate import EMULATION_NOTE, emulated_session
    from sdc.runtime.models import OnnxModel

    atol, rtol = tolerance(art.precision, sub.name)
    spec = sub.spec.to_json()
    if art.precision in ("fp16", "bf16"):
        session = emulated_session(ctx.work / art.path, ctx.scratch)
        names = [o.name for o in session.get_outputs()]
        run = lambda **inputs: dict(zip(names, session.run(names, inputs)))  # noqa: E731
        where = EMULATION_NOTE
    elif art.precision == "int8" and not VALIDATE_FUSED.get(art.target, True):
        run = OnnxModel(ctx.work / art.path, spec, ["CPUExecutionProvider"], fuse=False)
        where = "onnxruntime CPUExecutionProvider, Q/DQ run as ops (no integer-kernel fusion): exact int8 arithmetic"
    else:
        run = OnnxModel(ctx.work / art.path, spec, ["CPUExecutionProvider"])
        integer = art.precision in ("int8", "int8-dynamic")
        where = "onnxruntime CPUExecutionProvider" + (" (integer kernels)" if integer else "")
    try:
        v = compare(sub.references, run, atol, rtol)
    except ValidationError as e:
        raise ValidationError(f"{sub.name} ({art.target}/{art.precision}): {e}")
    v.where = where
    cal = ctx.calibration
    if cal is not None and cal.holdout.get(sub.name):
        refs = cal.reference_outputs(sub.name, ctx.work / base.path, spec)
        cases = [(None, c, r) for c, r in zip(cal.holdout[sub.name], refs)]
        h = compare(cases, run, atol, rtol)
        v.holdout = {"cases": len(cases), "max_abs": h.max_abs, "max_rel": h.max_rel, "per_output": h.per_output,
                     "against": "the fp32 artifact (itself validated against Paddle)", "passed": h.passed}
        if art.precision == "int8":
            # Static int8 is defined by its calibrated activation ranges: it is judged on real pipeline
            # inputs. The build's random cases (N(0, 1) latents, random text states) lie outside those
            # ranges; their errors are recorded, not judged.
            v.judged_on = "held-out pipeline inputs (int8 scales are valid for the calibrated distribution)"
            v.passed = h.passed
        else:
            v.passed = v.passed and h.passed
    art.validation = v
    if not v.passed:
        report_failure(ctx, sub, art, v)
