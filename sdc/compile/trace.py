"""Stages `load`, `reference` and `trace`: Paddle modules from the checkpoint, their reference outputs,
and static programs with named dynamic dims."""

from __future__ import annotations

import time

import numpy as np

from sdc.compile.context import BuildContext, SubmodelBuild


def load_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    """Build the Paddle module and load its weights (errors name the file and the fix); a submodel too big
    for memory is loaded depth-tied, its weights streamed in later (sdc.compile.streamed)."""
    from sdc.compile.streamed import should_stream
    from sdc.graphs import load

    if should_stream(ctx, sub):
        from paddle import nn

        from sdc.graphs.tied import load_tied

        sub.layer, sub.ties = load_tied(ctx.model_dir, sub.name, sub.config)
        sub.linear_keys = tuple(f"{p}.weight" for p, s in sub.layer.named_sublayers() if isinstance(s, nn.Linear))
        return
    sub.layer = load(ctx.model_dir, sub.name, allow_pickle=ctx.options.allow_pickle)


def reference_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    """Run the dygraph module on the spec's sample inputs: the numbers every artifact must reproduce.

    Done before tracing because `to_static` rewrites the module's forward in place. A depth-tied module
    (streamed weights) is as deep as the real model, and a deep random-weight model amplifies rounding:
    its reference is the module in float64, and `sub.reference_floor` records how far the float32
    module itself lands from it (the validation allows a few times that, sdc.compile.validate).
    """
    cases = _run_module(sub, sub.layer, "float32")
    if sub.ties:
        sub.layer.to(dtype="float64")
        exact = _run_module(sub, sub.layer, "float64")
        sub.layer.to(dtype="float32")  # exact: the weights were float32 values
        sub.reference_floor = max(float(np.abs(c[2][k] - e[2][k]).max()) for c, e in zip(cases, exact) for k in c[2])
        cases = exact
    sub.references = cases


def _run_module(sub: SubmodelBuild, layer, dtype: str) -> list:
    import paddle

    cases = []
    for i, dims in enumerate(sub.spec.sample_dims):
        inputs = sub.spec.dummy_inputs(dims, seed=i)
        feed = [paddle.to_tensor(inputs[n].astype(dtype) if inputs[n].dtype == np.float32 else inputs[n])
                for n in sub.spec.input_names]
        with paddle.no_grad():
            out = layer(*feed)
        out = out if isinstance(out, (tuple, list)) else (out,)
        if len(out) != len(sub.spec.outputs):
            raise AssertionError(f"{sub.name}: module returned {len(out)} outputs, spec has {len(sub.spec.outputs)}")
        outputs = {name: np.asarray(t.numpy(), dtype=np.float32) for name, t in zip(sub.spec.output_names, out)}
        cases.append((dims, inputs, outputs))
    return cases


def trace_stage(ctx: BuildContext, sub: SubmodelBuild) -> None:
    """`paddle.jit.to_static` with InputSpecs from the submodel spec; saves `<scratch>/<name>/model.json`."""
    import paddle

    from sdc.compile.conversion import fast_conversion

    t0 = time.perf_counter()
    specs = [
        paddle.static.InputSpec([None if isinstance(d, str) else d for d in t.shape], t.dtype, t.name)
        for t in sub.spec.inputs
    ]
    static = paddle.jit.to_static(sub.layer, input_spec=specs, full_graph=True)
    prefix = ctx.scratch / sub.name / "model"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with fast_conversion():  # the conversion runs here, at save
        paddle.jit.save(static, str(prefix))
    sub.program_prefix = prefix
    from sdc.passes.program import run_program_passes

    try:
        sub.program_passes = run_program_passes(prefix.with_suffix(".json"))
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError: Paddle's writer ignores failed writes
        from sdc.compile.output import incomplete_write

        raise incomplete_write(prefix.with_suffix(".json"), ctx.out)
    from sdc.compile.p2o import submit_paddle2onnx

    # Converted by the worker while the next submodel traces; the export stage collects it.
    submit_paddle2onnx(sub.name, prefix.with_suffix(".json"), ctx.scratch / sub.name / "graph.onnx", ctx.options.opset)
    sub.seconds["trace"] = time.perf_counter() - t0
