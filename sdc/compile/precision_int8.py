"""The integer precisions' builders: static int8 (calibrated Q/DQ, sensitivity sweep, repair), int8-dynamic
(no calibration; written weight by weight) and w8 (weights-only). Called by sdc.compile.precision's
stage, which validates what they return."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sdc.compile.context import Artifact, BuildContext, SubmodelBuild
from sdc.compile.precision import _observed, _rel_limit, _save, tolerance
from sdc.errors import ValidationError
from sdc.runtime.bundle import model_path

REPAIR_FRACTION = 0.25  # at most this share of an int8 graph's layers stays float to meet the tolerance


def build_int8(ctx: BuildContext, sub: SubmodelBuild, base: Artifact, target: str, precision: str) -> Artifact:
    """Static int8: calibrate, quantize everything, sweep per-layer sensitivity, re-quantize without the
    sensitive layers."""
    import onnx

    from sdc.compile.sensitivity import SWEEP_CASES, crop, last_row, stack, sweep
    from sdc.passes.onnx.float16 import name_nodes
    from sdc.passes.onnx.qdq import SCHEMES, quantizable_nodes, quantize_int8, quantized_counts

    cal = ctx.calibration
    scheme = SCHEMES[target]
    work = ctx.scratch / sub.name / f"int8-{target}"
    work.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(ctx.work / base.path))
    name_nodes(model)
    nodes = quantizable_nodes(model)
    named = work / "fp32.onnx"
    onnx.save_model(model, str(named), save_as_external_data=True, location="fp32.onnx.data")
    external = sub.weight_bytes > ctx.options.external_data_threshold
    del model
    cache = work / "ranges.json"
    full = work / "all.onnx"
    t0 = time.perf_counter()
    observed = _observed(ctx, sub, base)
    if observed is not None:  # the calibration runs ran this very graph: its ranges are the scales' input
        ranges_from = f"observed during the calibration runs ({observed.runs} calls of this graph)"
    else:  # another target's graph ran: the captured inputs go through this one, observed the same way
        from sdc.compile.ranges import measure

        observed = measure(ctx.work / base.path, cal.calibration[sub.name])
        ranges_from = f"observed on this graph over the {observed.runs} captured calibration inputs"
    observed.save_ort_cache(cache)
    calib_seconds = time.perf_counter() - t0
    quantize_int8(named, full, scheme, None, cache, [], external=True)
    t_sweep = time.perf_counter()
    spec = sub.spec.to_json()
    picked = [last_row(c, spec) for c in _spread(cal.holdout[sub.name], SWEEP_CASES)]
    stacked = stack([crop(c, spec, _latent_multiple(ctx), _image_factor(ctx)) for c in picked], spec)
    if len(stacked) != 1:
        raise ValidationError(f"{sub.name}: the sensitivity sweep needs inputs with a leading batch axis")
    batch = next(iter(stacked[0].values())).shape[0]
    result = sweep(full, named, nodes, stacked[0], batch, ctx.scratch, log=ctx.log)
    result.cases = len(picked)
    out = work / "final.onnx"
    # The sweep's rule first; while the held-out error is over tolerance, the next most sensitive
    # layers stay float too (doubling), up to REPAIR_FRACTION of the layers: past that, int8 is not
    # worth it for this model and validation fails the build with the error it measured.
    order = sorted(result.errors, key=lambda k: -result.errors[k])
    excluded, rounds = list(result.excluded), 0
    cap = max(len(excluded), int(REPAIR_FRACTION * len(nodes)))
    while True:
        quantize_int8(named, out, scheme, None, cache, excluded, external=external)
        rel = _holdout_relative(ctx, sub, base, out, scheme.target)
        limit = _rel_limit(*tolerance("int8", sub.name), sub)
        if rel is None or rel <= limit or len(excluded) >= cap:
            break
        more = min(cap, max(len(excluded) + 1, 2 * len(excluded)))
        ctx.log(f"{sub.name} {target}/int8: held-out error {rel:.3g} over {limit:.3g}; keeping {more} layers float")
        excluded, rounds = order[:more], rounds + 1
    result.repair(excluded, rounds)
    t_end = time.perf_counter()
    final = onnx.load(str(out))
    counts = quantized_counts(final)
    art = _save(ctx, sub, final, target, precision)
    art.passes = dict(base.passes, **{"precision-int8": counts})
    art.precision_record = {
        "scheme": scheme.to_json(),
        "calibration": dict(cal.record(), method="MinMax", ranges=ranges_from,
                            library="onnxruntime.quantization.quantize_static (QDQ)", seconds=round(calib_seconds, 1)),
        "quantized_ops": {k: v for k, v in counts.items() if k not in ("QuantizeLinear", "DequantizeLinear")},
        "qdq_nodes": {k: v for k, v in counts.items() if k in ("QuantizeLinear", "DequantizeLinear")},
        "candidates": len(nodes),
        "sensitivity": result.record(),
        "seconds": {"ranges": round(calib_seconds, 1), "quantize_all": round(t_sweep - t0 - calib_seconds, 1),
                    "sweep": round(result.seconds, 1),
                    "final_quantize_and_repair": round(t_end - t_sweep - result.seconds, 1)},
    }
    return art


def _holdout_relative(ctx: BuildContext, sub: SubmodelBuild, base: Artifact, int8_path: Path,
                      target: str) -> float | None:
    """max |int8 - fp32| / max |fp32| over the held-out pipeline inputs (None without them)."""
    from sdc.passes.onnx.qdq import VALIDATE_FUSED
    from sdc.runtime.models import OnnxModel

    cal = ctx.calibration
    cases = cal.holdout.get(sub.name) if cal is not None else None
    if not cases:
        return None
    spec = sub.spec.to_json()
    refs = cal.reference_outputs(sub.name, ctx.work / base.path, spec)
    q = OnnxModel(int8_path, spec, ["CPUExecutionProvider"], fuse=VALIDATE_FUSED.get(target, True))
    worst = 0.0
    for c, ref in zip(cases, refs):
        got = q(**c)
        for k, r in ref.items():
            scale = float(np.max(np.abs(r))) or 1.0
            worst = max(worst, float(np.max(np.abs(got[k].astype(np.float64) - r))) / scale)
    return worst


def build_w8(ctx: BuildContext, sub: SubmodelBuild, base: Artifact, target: str, precision: str) -> Artifact:
    """Weights-only int8: per-channel int8 weights dequantized in the graph; compute stays float."""
    import onnx

    from sdc.passes.onnx.float16 import name_nodes
    from sdc.passes.onnx.qdq import weights_only_int8

    model = onnx.load(str(ctx.work / base.path))
    name_nodes(model)
    counts = weights_only_int8(model, set())
    art = _save(ctx, sub, model, target, precision)
    art.passes = dict(base.passes, **{"precision-w8": counts})
    art.precision_record = {"weights": "int8, symmetric per output channel, DequantizeLinear in the graph",
                            "quantized_ops": counts}
    return art


def build_int8_dynamic(ctx: BuildContext, sub: SubmodelBuild, base: Artifact, target: str,
                       precision: str) -> Artifact:
    """Dynamic int8 (sdc.passes.onnx.dynamic_int8), written weight by weight beside the fp32 graph; its
    float weights stay in the fp32 graph's data file."""
    from sdc.passes.onnx.qdq import SCHEMES

    t0 = time.perf_counter()
    rel = model_path(sub.name, target, precision)
    counts, files = write_dynamic_int8(ctx.work / base.path, ctx.work / rel, SCHEMES[target].reduce_range)
    art = Artifact(target, precision, rel, data_paths=[f"{sub.name}/{f}" for f in files])
    art.passes = dict(base.passes, **{f"precision-{precision}": counts})
    art.precision_record = {
        "scheme": dict(SCHEMES[target].to_json(), activations="uint8, quantized on every call from their own range"),
        "writer": "sdc.passes.onnx.dynamic_int8 (DynamicQuantizeLinear + MatMulInteger, as onnxruntime's "
                  "quantize_dynamic, streamed)",
        "quantized_ops": {"MatMul": counts["MatMulInteger"]},
        "float_ops": {k: counts[k] for k in ("MatMul", "Conv") if counts.get(k)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return art


def _spread(items: list, k: int) -> list:
    """k items evenly over the list (one: the middle one, a mid-schedule step for the UNet)."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


def _latent_multiple(ctx: BuildContext) -> int:
    from sdc.graphs.specs import unet_multiple

    unet = ctx.submodels.get("unet")
    return unet_multiple(unet.config) if unet is not None else 1


def _image_factor(ctx: BuildContext) -> int:
    for name in ("vae_decoder", "vae_encoder"):
        if name in ctx.submodels:
            return ctx.submodels[name].config.downscale
    return 8


def write_dynamic_int8(src: Path, dst: Path, reduce_range: bool) -> tuple[dict, list[str]]:
    """The int8-dynamic graph of the fp32 graph at `src`, saved at `dst`; weights read one at a time.

    When both graphs share a folder, the float weights left as they were keep pointing into src's data
    file(s) instead of being copied. Returns (op counts, the data file names the saved graph reads).
    """
    import onnx

    from sdc.compile.artifacts import external_ref, read_float_initializer, stream_save
    from sdc.passes.onnx.dynamic_int8 import quantize_dynamic_streamed

    model = onnx.load(str(src), load_external_data=False)
    counts = quantize_dynamic_streamed(model, lambda t: read_float_initializer(t, src.parent), reduce_range)
    shared = {}
    if src.parent.resolve() == dst.parent.resolve():
        shared = {ref: ref for ref in (external_ref(t) for t in model.graph.initializer) if ref is not None}
    own, _, _ = stream_save(model, dst, src.parent, shared=shared)
    return counts, sorted({ref[0] for ref in shared}) + ([own] if own else [])
