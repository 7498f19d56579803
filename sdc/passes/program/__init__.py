"""Rewrites of the saved static Paddle program (PIR JSON) before paddle2onnx reads it.

They make export correct on Paddle versions whose programs paddle2onnx misreads; each pass is a
function `(program: dict) -> ProgramPassResult` in its own module, run in `PROGRAM_PASSES` order.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdc.passes.program.base import ProgramPassResult
from sdc.passes.program.float64_attributes import float64_attributes

PROGRAM_PASSES = (float64_attributes,)


def run_program_passes(program_json: Path) -> dict[str, dict[str, int]]:
    """Apply every program pass to the file in place; returns {pass: counts} (empty counts: untouched)."""
    program_json = Path(program_json)
    program = json.loads(program_json.read_text(encoding="utf-8"))
    results = [p(program) for p in PROGRAM_PASSES]
    if any(r.modified for r in results):
        program_json.write_text(json.dumps(program, separators=(",", ":")), encoding="utf-8")
    return {r.name: r.counts for r in results}


__all__ = ["PROGRAM_PASSES", "ProgramPassResult", "run_program_passes"]
