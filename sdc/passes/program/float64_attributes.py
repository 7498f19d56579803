"""float64 op attributes that paddle2onnx 2.1.0 reads as float32 -> float32.

paddlepaddle 3.3 writes `group_norm.epsilon` and interpolation `scale` as float64 (`0.a_f64`);
paddle2onnx 2.1.0 reads those slots as float32, so group norm gets a garbage epsilon silently and
upsampling fails to convert (DESIGN.md, known traps; reproduced in tests/passes/test_program.py).
Pattern: an op in FLOAT32_ATTRIBUTES carrying one of its listed attributes typed float64 (alone or
in an array). Rewrite: the same value typed float32, which is what the kernel computes in anyway.
Other float64 attributes are left alone: paddle2onnx reads some (e.g. `full.value`) as float64.
"""

from __future__ import annotations

import logging

from sdc.passes.program.base import ProgramPassResult, iter_ops, op_name

log = logging.getLogger("sdc.passes")

F64, F32 = "0.a_f64", "0.a_f32"
INTERP_OPS = ("nearest_interp", "bilinear_interp", "bicubic_interp", "linear_interp", "trilinear_interp")
FLOAT32_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "group_norm": ("epsilon",),
    "layer_norm": ("epsilon",),
    "instance_norm": ("epsilon",),
    "batch_norm": ("epsilon", "momentum"),
    **{op: ("scale",) for op in INTERP_OPS},
}


def _retag(value: dict) -> int:
    """Retype a float64 attribute value (or every float64 element of an array) in place; returns how many."""
    kind = value.get("#")
    if kind == F64:
        value["#"] = F32
        return 1
    if kind == "0.a_array" and isinstance(value.get("D"), list):
        return sum(_retag(v) for v in value["D"] if isinstance(v, dict))
    return 0


def float64_attributes(program: dict) -> ProgramPassResult:
    result = ProgramPassResult("float64_attributes")
    for op in iter_ops(program):
        names = FLOAT32_ATTRIBUTES.get(op_name(op))
        for attr in op["A"]:
            if not isinstance(attr, dict) or not isinstance(attr.get("AT"), dict):
                continue
            if names is None or attr.get("N") not in names:
                if attr["AT"].get("#") == F64:
                    log.info("float64_attributes: kept %s.%s as float64 (not a slot paddle2onnx misreads)",
                             op_name(op), attr.get("N"))
                continue
            if _retag(attr["AT"]):
                key = f"{op_name(op)}.{attr['N']}"
                result.counts[key] = result.counts.get(key, 0) + 1
    return result
