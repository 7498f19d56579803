"""Stage `export`: paddle2onnx (in a subprocess) to a weightless graph, then weights, names and axes attached.

One route for every size (DESIGN.md, known traps): paddle2onnx writes the graph without parameters,
we attach them as initializers under their diffusers names (deterministic across builds, readable
in Netron), name inputs/outputs and dynamic axes from the spec, and save with external data when the
weights are large.
"""

from __future__ import annotations

import time

import numpy as np

from sdc.compile.context import Artifact, BuildContext, SubmodelBuild
from sdc.compile.p2o import close_worker, paddle2onnx_result, release_worker
from sdc.errors import ExportError
from sdc.runtime.bundle import model_path


GC_BYTES = 64 << 20  # past this, collect the freed module at once (its parameters are as large as the model)


def attach_weights(model, layer, submodel: str) -> int:
    """Add the module's parameters as initializers named by their state-dict keys; returns total bytes.

    Consumes the module: each parameter's memory is released once copied (the layer is unusable after).
    """
    from onnx import numpy_helper

    by_paddle_name = {}
    for key, p in layer.named_parameters():
        by_paddle_name[p.name] = (key, p)
    for key, b in layer.named_buffers():
        by_paddle_name[b.name] = (key, b)
    graph = model.graph
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    produced |= {o for n in graph.node for o in n.output}
    renames: dict[str, str] = {}
    total = 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if not name or name in produced:
                continue
            if name not in renames:
                if name not in by_paddle_name:
                    raise ExportError(f"{submodel}: exported graph reads {name!r}, which is no parameter of the module")
                key, tensor = by_paddle_name[name]
                arr = np.ascontiguousarray(tensor.numpy())
                graph.initializer.append(numpy_helper.from_array(arr, name=key))
                total += arr.nbytes
                # The module is dropped after export: free each parameter as soon as the graph holds its copy,
                # so module and graph never hold every weight twice (SDXL's UNet: 10 GB each in fp32).
                del arr
                tensor._clear_data()
                renames[name] = key
            node.input[i] = renames[name]
    return total


def name_io(model, sub: SubmodelBuild) -> None:
    """Inputs keep their InputSpec names; outputs `fetch_name_i` get the contract names; axes get dim names."""
    graph = model.graph
    spec = sub.spec
    if [i.name for i in graph.input] != spec.input_names:
        raise ExportError(f"{sub.name}: exported inputs {[i.name for i in graph.input]} != contract {spec.input_names}")
    if len(graph.output) != len(spec.outputs):
        raise ExportError(f"{sub.name}: exported {len(graph.output)} outputs, contract has {len(spec.outputs)}")
    renames = {o.name: t.name for o, t in zip(graph.output, spec.outputs)}
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for value, t in list(zip(graph.input, spec.inputs)) + list(zip(graph.output, spec.outputs)):
        value.name = t.name
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in t.shape:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def export_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    t0 = time.perf_counter()
    try:
        write_artifacts(ctx, sub, lambda: exported_model(ctx, sub))
    finally:
        if sub.name == list(ctx.submodels)[-1]:
            if ctx.options.precision_stage:
                close_worker()  # the last export: free the worker's memory for the precision stage
            else:
                release_worker()  # the last export: kept for a next build in this process when small and idle
    sub.seconds["export"] = time.perf_counter() - t0


def exported_model(ctx: BuildContext, sub: SubmodelBuild):
    """paddle2onnx's graph with the weights attached and the contract's names; frees the Paddle module.

    Validation compares against references computed before tracing, so after this the module's
    parameters (as large as the model) are dead weight during the passes.
    """
    import gc

    import onnx

    graph_only = paddle2onnx_result(sub.name)  # submitted by the trace stage: converted while the next one traced
    model = onnx.load(str(graph_only))
    sub.weight_bytes = attach_weights(model, sub.layer, sub.name)
    name_io(model, sub)
    if sub.ties:  # nodes are in forward order only now: mark each tied weight's reader with its block
        from sdc.compile.streamed import tag_uses

        tag_uses(model, sub.ties)
    model.producer_name, model.producer_version = "sdc", _version()
    sub.layer = None
    if sub.weight_bytes > GC_BYTES:
        gc.collect()
    return model


def write_artifacts(ctx: BuildContext, sub: SubmodelBuild, make_model) -> None:
    """The portable graph (cleanup passes only) and one target-tuned graph per requested target.

    Target graphs are optimized before the portable one is saved (saving moves its weights to disk),
    then saved pointing at the portable weights wherever the bytes are identical. `make_model()`
    returns the exported graph; taking a factory lets each rewrite drop the previous copy (memory
    peaks at two copies of the weights, not three).
    """
    from sdc.compile.artifacts import save_onnx, save_sharing, weight_digests

    opts = ctx.options
    model = make_model()
    base_dir = None
    if sub.weight_bytes > opts.external_data_threshold:
        # Weights to scratch once; every graph below holds references into that file, not the bytes.
        raw = ctx.scratch / sub.name / "export.onnx"
        save_onnx(model, raw, external=True)
        base_dir = raw.parent
    portable_passes: dict = {}
    tuned = []
    if opts.passes:
        from sdc.passes import fused_ops, optimize

        model, report = optimize(model, "portable", debug=opts.debug_passes, base_dir=base_dir)
        portable_passes = report.passes
        for target in opts.targets:
            tuned_model, tuned_report = optimize(model, target, debug=opts.debug_passes, after=report,
                                                 base_dir=base_dir)
            if fused_ops(tuned_report.passes):
                tuned.append((target, tuned_model, tuned_report))
            else:  # identical to the portable graph: the runtime falls back to it
                ctx.log(f"  {sub.name}: no {target} fusion applies; the portable graph serves {target}")
            del tuned_model
    if base_dir is not None:
        _stream_artifacts(ctx, sub, model, portable_passes, tuned, base_dir)
        return
    # Shared weights must live in a data file; past the threshold they must anyway (2 GB protobuf limit).
    external = sub.weight_bytes > opts.external_data_threshold or bool(tuned)
    digests = weight_digests(model) if tuned else {}
    rel = model_path(sub.name)
    data = save_onnx(model, ctx.work / rel, external=external)
    portable_data = [f"{sub.name}/{data}"] if data else []
    sub.artifacts.append(Artifact("portable", "fp32", rel, data_paths=portable_data, passes=portable_passes))
    for target, tuned_model, report in tuned:
        rel_t = model_path(sub.name, target)
        own, shared = save_sharing(tuned_model, ctx.work / rel_t, model, digests)
        data_paths = (portable_data if shared else []) + ([f"{sub.name}/{own}"] if own else [])
        sub.artifacts.append(Artifact(target, "fp32", rel_t, data_paths=data_paths, passes=report.passes))
        del tuned_model


def _stream_artifacts(ctx: BuildContext, sub: SubmodelBuild, model, portable_passes: dict, tuned: list,
                      base_dir) -> None:
    """write_artifacts past the threshold: graphs that refer to the scratch export, copied in chunks."""
    from sdc.compile.artifacts import stream_save

    rel = model_path(sub.name)
    data, moved, _ = stream_save(model, ctx.work / rel, base_dir)
    portable_data = [f"{sub.name}/{data}"] if data else []
    sub.artifacts.append(Artifact("portable", "fp32", rel, data_paths=portable_data, passes=portable_passes))
    del model
    while tuned:
        target, tuned_model, report = tuned.pop(0)
        rel_t = model_path(sub.name, target)
        own, _, shared = stream_save(tuned_model, ctx.work / rel_t, base_dir, shared=moved)
        data_paths = (portable_data if shared else []) + ([f"{sub.name}/{own}"] if own else [])
        sub.artifacts.append(Artifact(target, "fp32", rel_t, data_paths=data_paths, passes=report.passes))
        del tuned_model


def _version() -> str:
    from sdc import __version__

    return __version__
