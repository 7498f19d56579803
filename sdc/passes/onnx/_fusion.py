"""What every ONNX pass shares: its result type, a runner for onnxscript rewrite rules, and constant readers.

A fusion pass is a name and a tuple of onnxscript `RewriteRule`s, applied in order (a rule that
matches more, say GroupNorm+SiLU, goes before the one it contains). Each rule is counted under its
own name, so a pass reports e.g. {"GroupNorm+SiLU": 12, "GroupNorm": 3}. With `debug`, a rule that
rewrote nothing is re-run under onnxscript's MatchingTracer and its nearest misses are logged to
the "sdc.passes" logger with the reason the pattern or its check gave.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.rewriter import MatchingTracer, MatchResult, MatchStatus, RewriteRule, RewriteRuleSet

log = logging.getLogger("sdc.passes")


@dataclasses.dataclass
class PassResult:
    """What one pass did: `counts` maps a rule (or a removed op type) to how often it applied."""

    name: str
    modified: bool
    counts: dict[str, int]


# A pass takes the model (rewritten in place) and the debug flag.
Pass = Callable[[ir.Model, bool], PassResult]


@dataclasses.dataclass(frozen=True)
class Fusion:
    """A pass made of rewrite rules; each rule must have a name, which is its key in `counts`."""

    name: str
    rules: tuple[RewriteRule, ...]

    def __post_init__(self) -> None:
        unnamed = [r for r in self.rules if not r.name]
        if unnamed:
            raise ValueError(f"pass {self.name}: every rule needs a name, {len(unnamed)} have none")

    def __call__(self, model: ir.Model, debug: bool = False) -> PassResult:
        counts: dict[str, int] = {}
        try:
            for rule in self.rules:
                n = RewriteRuleSet([rule]).apply_to_model(model)
                if n:
                    counts[rule.name] = counts.get(rule.name, 0) + n
                elif debug:
                    explain_no_match(self.name, rule, model)
        finally:
            forget_matches(self.rules)
        if counts:  # what the fused nodes replaced but did not consume (Shape(x), ones/zeros) is dead now
            common.RemoveUnusedNodesPass()(model)
        return PassResult(self.name, bool(counts), counts)


def forget_matches(rules) -> None:
    """Drop what onnxscript's matchers remember of the last graph they matched.

    A RewriteRule's SimplePatternMatcher keeps the last graph, node and match it looked at, and rules
    live at module level, so the last model a pass saw (weights included) stayed alive after
    optimize() returned: measured, 768 MiB of a 768 MiB model were freed only when the next model
    was optimized. onnxscript 0.7.2 has no public reset, hence the private attributes;
    tests/passes/test_optimize.py::test_no_model_kept_alive fails if they change.
    """
    for rule in rules:
        matcher = getattr(rule, "_matcher", None)
        if matcher is None:
            continue
        for attr in ("_graph", "_current_node"):
            if hasattr(matcher, attr):
                setattr(matcher, attr, None)
        if hasattr(matcher, "_match"):
            matcher._match = MatchResult()


def explain_no_match(pass_name: str, rule: RewriteRule, model: ir.Model) -> None:
    """Log the closest partial matches of a rule that rewrote nothing, and why each failed."""
    tracer = MatchingTracer()
    try:
        RewriteRuleSet([rule]).apply_to_model(model, tracer=tracer)  # with a tracer nothing is rewritten
    finally:
        forget_matches([rule])
    misses = tracer.best_matches_map.get(rule, [])
    if not misses:
        log.info("%s/%s: matched nothing (no node resembles the pattern's output op)", pass_name, rule.name)
        return
    for miss in misses[:3]:
        result = miss.match_result
        status = "check rejected" if miss.status == MatchStatus.CONDITION_FAILED else "pattern failed"
        log.info(
            "%s/%s: %s at node %s (%s) after %d matched nodes: %s",
            pass_name, rule.name, status, miss.root_node.name, miss.root_node.op_type,
            len(result.nodes), result.reason or "no reason given",
        )
    if len(misses) > 3:
        log.info("%s/%s: %d more near misses like these", pass_name, rule.name, len(misses) - 3)


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value's contents if it is a constant (initializer or folded Constant), else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def scalar(value: ir.Value | None) -> float | None:
    """A constant holding exactly one number (any shape), as a float; else None."""
    array = constant(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def attribute(node: ir.Node, name: str, default=None):
    """A node attribute's Python value, or `default` if the node does not set it."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Node count per op type ('domain::Op' outside the default domain), subgraphs included."""
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts
