"""Build TensorRT plans from a bundle's ONNX artifacts, and refit weight-stripped plans on load.

Written against the TensorRT Python API of 10.x (>= 10.0, which has IParserRefitter and STRIP_PLAN) and
11.x. `tensorrt` is imported lazily, only here and in the runtime's TensorRT backend. What the two versions
need differently, from NVIDIA's 10.x -> 11.x migration guide:
- 11.x networks are always strongly typed (the STRONGLY_TYPED creation flag is accepted and ignored); on
  10.x the flag is what makes the precision the ONNX graph states the engine's precision. sdc sets it on
  both: the precision stage's fp16/bf16/Q-DQ graph *is* the engine's precision (an fp32 graph builds an
  fp32 engine), and no precision builder flag (removed in 11.x) is ever set.
- STRIP_PLAN with REFIT_IDENTICAL: the plan holds no refittable weights; they are refit on load from the
  same ONNX file the plan was built from (the bundle carries them once for every GPU kind). REFIT_IDENTICAL
  also lets the builder optimise as if the weights were constants (the docs: plain REFIT may drop a GEMM
  bias; REFIT_IDENTICAL does not).

Not run on real hardware: the machines this was written on have no GPU and TensorRT's libraries cannot be
installed there (the pip wheels need NVIDIA's index and a driver). The API names were checked against the
11.4 Python bindings' own docstrings; see README "What has run where".
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdc.errors import InputError, SdcError


class EngineBuildError(SdcError):
    """TensorRT refused a graph (parser or builder errors), or a refit failed."""


@dataclass
class BuildLog:
    """TensorRT's log lines of one build (kept beside the engines, shown with --verbose)."""

    lines: list[str] = field(default_factory=list)

    def tail(self, n: int = 5) -> str:
        return " | ".join(self.lines[-n:])


def _logger(trt, log: BuildLog):
    """A trt.ILogger that records every message at INFO and above into `log`."""

    sev = trt.ILogger.Severity
    shown = {sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING, sev.INFO}

    class _Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):  # called from TensorRT's threads too: list.append is atomic
            if severity in shown:
                log.lines.append(f"[{str(severity).rsplit('.', 1)[-1]}] {msg}")

    return _Capture()


def input_shapes(spec_inputs: list[dict], dims: dict[str, list[int]]) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shape of every input: each named dim from the profile's dims, numbers as they are.

    A dim the profile does not give is an error: TensorRT needs all three for every dynamic dim."""
    out = {}
    for t in spec_inputs:
        triple = []
        for k in range(3):
            shape = []
            for d in t["shape"]:
                if isinstance(d, str):
                    if d not in dims:
                        raise InputError(f"input {t['name']}: dim {d!r} is not in the profile's dims "
                                         f"({', '.join(sorted(dims)) or 'none'}); rebuild with a profile that names it")
                    shape.append(int(dims[d][k]))
                else:
                    shape.append(int(d))
            triple.append(tuple(shape))
        out[t["name"]] = tuple(triple)
    return out


def build_plan(onnx_path: Path, shapes: dict[str, tuple[tuple, tuple, tuple]], settings, timing_cache: Path,
               log: BuildLog) -> bytes:
    """One serialized plan from an ONNX file (external data read beside it) with one optimization profile.

    The timing cache at `timing_cache` is loaded when present and written back after the build, so the
    second engine of a bundle (and every rebuild on this GPU) reuses the kernel timings of the first.
    """
    import tensorrt as trt

    logger = _logger(trt, log)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser refused it: {'; '.join(errors)[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    config.builder_optimization_level = settings.optimization_level
    if settings.weight_stripped:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in shapes:
            raise EngineBuildError(f"{onnx_path}: input {name!r} is not in the bundle's spec; rebuild the bundle")
        profile.set_shape(name, *shapes[name])
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine ({log.tail()})")
    write_atomically(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def refit_from_onnx(trt, engine, onnx_path: Path, logger) -> None:
    """Fill a weight-stripped engine's weights from the ONNX file it was built from (REFIT_IDENTICAL)."""
    refitter = trt.Refitter(engine, logger)
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)):
        errors = [str(parser_refitter.get_error(i)) for i in range(parser_refitter.num_errors)]
        raise EngineBuildError(f"{onnx_path}: refitting the engine from it failed: {'; '.join(errors)[:300]}")
    if not refitter.refit_cuda_engine():
        raise EngineBuildError(f"{onnx_path}: TensorRT refused the refit (the ONNX weights are not the ones the "
                               "plan was built from); rebuild the engines with sdc engines build")


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
