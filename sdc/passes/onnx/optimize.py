"""`optimize(model, target)`: run a target's pipeline on an in-memory ModelProto and report what changed.

Memory (a real UNet holds 3.4 GB of weights): onnx-ir wraps the input's TensorProtos without
copying them, and the passes only read the small ones; the one copy is made when the result is
serialized. Peak memory is input + output, and dropping the input frees its weights: no rule
keeps the model alive after a pass (see _fusion.forget_matches). Initializers are either loaded, or
external references with `base_dir` given (then they stay references, and memory holds only the
tensors the passes make: how sdc.compile.export handles models past the external-data threshold).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import onnx
import onnx_ir as ir

from sdc.errors import SdcError
from sdc.passes.onnx._fusion import PassResult
from sdc.passes.onnx.pipelines import PIPELINES

log = logging.getLogger("sdc.passes")


class UnknownTargetError(SdcError, ValueError):
    """A target name with no pipeline."""


@dataclasses.dataclass
class PassReport:
    """Per-pass counts for one optimize() run, in pipeline order (a pass run twice gets a #2 suffix)."""

    target: str
    passes: dict[str, dict[str, int]]
    seconds: float

    @property
    def total_changes(self) -> int:
        return sum(abs(n) for counts in self.passes.values() for n in counts.values())

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "passes": self.passes, "total_changes": self.total_changes,
                           "seconds": round(self.seconds, 3)}, sort_keys=True)


def optimize(model: onnx.ModelProto, target: str, debug: bool = False,
             after: PassReport | None = None, base_dir=None) -> tuple[onnx.ModelProto, PassReport]:
    """The model rewritten for `target` (portable, ort-cpu, ort-cuda, tensorrt), and what each pass did.

    With debug=True, every fusion rule that rewrote nothing logs its nearest misses and the reason
    to the "sdc.passes" logger (INFO). `after`: the report of the pipeline that already produced
    `model`; the leading passes the two pipelines share are not run again (cleanup is idempotent and
    costs most of a small model's pass time) and their counts are taken from that report.
    `base_dir`: where the external data of `model`'s external initializers lives; they stay references
    in the result (only tensors a pass reads are loaded, and tensors it makes are inline).
    """
    if target not in PIPELINES:
        raise UnknownTargetError(f"unknown pass target {target!r} (choose one of: {', '.join(PIPELINES)})")
    t0 = time.perf_counter()
    passes = PIPELINES[target]
    done: list[PassResult] = []
    if after is not None:
        shared = 0
        for a, b in zip(PIPELINES[after.target], passes):
            if a is not b:
                break
            shared += 1
        done = [PassResult(name, bool(counts), dict(counts)) for name, counts in list(after.passes.items())[:shared]]
        passes = passes[shared:]
    model_ir = ir.serde.deserialize_model(model)
    if base_dir is not None:
        for value in model_ir.graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value.base_dir = str(base_dir)
    results: list[PassResult] = done + [run_pass(p, model_ir, debug) for p in passes]
    out = ir.serde.serialize_model(model_ir)
    report = PassReport(target, _by_name(results), time.perf_counter() - t0)
    log.info("optimize %s: %s", target, report.to_json())
    return out, report


def run_pass(p, model_ir: ir.Model, debug: bool) -> PassResult:
    t0 = time.perf_counter()
    result = p(model_ir, debug)
    log.debug("%s: %s in %.2fs", result.name, result.counts, time.perf_counter() - t0)
    return result


def _by_name(results: list[PassResult]) -> dict[str, dict[str, int]]:
    passes: dict[str, dict[str, int]] = {}
    for r in results:
        name, i = r.name, 1
        while name in passes:
            i += 1
            name = f"{r.name}#{i}"
        passes[name] = dict(r.counts)
    return passes
