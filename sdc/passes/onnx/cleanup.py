"""Pass `cleanup`: Identity removal, constant folding, shape-computation simplification, dead-node removal.

paddle2onnx wraps most results in Identity ("auto.cast", "p2o.pd_op.*"), emits paddle's `scale` op
as Mul then Add(0), and computes reshape targets from Shape/Slice/Concat chains. Fusions match the
graph's maths, not that noise, so every target pipeline starts here. The engines are onnx-ir's and
onnxscript's own passes and rules; this module chooses and orders them and adds two things they lack.

Graph inputs and outputs keep their names: an output produced by an Identity keeps the output's
name (the Identity's input takes it, see remove_identities), and no pass renames inputs; cleanup
raises if that ever breaks. Initializers are never merged by content (onnx-ir's
DeduplicateInitializersPass is left out): weight names are the diffusers state-dict names, which
engine refit and the manifest rely on.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import optimizer
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleSet
from onnxscript.rewriter.rules import common as rules

from sdc.passes.onnx._fusion import PassResult, constant, forget_matches, op_histogram

NAME = "cleanup"


def leading_dims_reshape(op, x, shape, starts, ends, tail):
    """Reshape(x, Concat(Shape(x)[0:k], tail)): paddle's flatten(start_axis=k) and reshape([b, s, -1])."""
    return op.Reshape(x, op.Concat(op.Slice(shape, starts, ends, _allow_other_inputs=True, _outputs=["lead"]),
                                   tail, axis=0))


def check_leading_dims(context, x, shape, tail, lead, **_) -> MatchResult:
    result = MatchResult()
    producer = shape.producer()
    if producer is None or producer.op_type != "Shape" or producer.inputs[0] is not x or producer.attributes:
        return result.fail("the sliced shape is not Shape(x) of the reshaped x", shape)
    bounds = lead.producer().inputs[1:]
    values = [None if v is None else constant(v) for v in bounds]
    if any(v is not None and a is None for v, a in zip(bounds, values)):
        return result.fail("Slice bounds are not constants", lead)
    starts, ends, axes, steps = (values + [None, None])[:4]
    if starts.tolist() != [0] or ends.shape != (1,) or (axes is not None and axes.tolist() not in ([0], [-1])) \
            or (steps is not None and steps.tolist() != [1]):
        return result.fail(f"Slice is not shape[0:k] (starts {starts}, ends {ends}, axes {axes}, steps {steps})", lead)
    if x.shape is None or not 0 < int(ends[0]) <= x.shape.rank():
        return result.fail(f"k = {ends[0]} is not within x's known rank ({x.shape})", x)
    rest = constant(tail)
    if rest is None or rest.ndim != 1:
        return result.fail("the rest of the target shape is not a 1-D constant", tail)
    allowzero = context.root.attributes.get("allowzero")
    if allowzero is not None and allowzero.value == 1 and 0 in rest.tolist():
        return result.fail("allowzero=1 with a literal 0 in the target: 0 would change meaning", tail)
    return result


def copy_leading_dims(op, x, ends, tail, **_):
    # With allowzero=0 a 0 in the target copies that input dim: exactly Shape(x)[0:k], without the chain.
    target = np.concatenate([np.zeros(int(constant(ends)[0]), np.int64), constant(tail).astype(np.int64)])
    return op.Reshape(x, op.Constant(value=ir.tensor(target)))


# onnxscript's identities (x+0, x*1, a Transpose of a Transpose, ...) and shape rules, plus ours.
RULES = (
    rules.add_0_rule, rules.sub_0_rule, rules.mul_by_1_rule, rules.div_by_1_rule,
    rules.dropout_inference_rule, rules.dropout_zero_rule,
    rules.cast_cast_rule, rules.no_op_cast_rule, rules.no_op_expand_rule, rules.no_op_transpose_rule,
    rules.transpose_transpose_rule, rules.reshape_reshape_rule, rules.unsqueeze_unsqueeze_rule,
    rules.squeeze_reshape_1d_rule, rules.flatten_to_reshape_rule, rules.collapse_slice_rule,
    rules.collapse_slice2_rule, rules.materialize_reshape_shape_rule,
    rules.cast_constant_of_shape_rule, rules.cast_constant_of_shape_without_value_rule,
    RewriteRule(leading_dims_reshape, copy_leading_dims, check_leading_dims, name="Reshape(x, Shape(x)[0:k] ++ c)"),
)


def remove_identities(model: ir.Model) -> int:
    """Identity nodes out, graph output names kept; returns how many went.

    Not onnx-ir's IdentityEliminationPass: given two outputs that are Identities of one value, it names
    both outputs after the second (measured: ['a', 'b'] became ['b', 'b_alias_1']). Here an Identity
    that makes a graph output goes only when its input can take the output's name: the input is no
    graph input, initializer or output, and feeds no other output-making Identity.
    """
    removed = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
            continue
        x, y = node.inputs[0], node.outputs[0]
        makes_output = y.is_graph_output()
        if makes_output and not _can_take_output_name(x, node):
            continue
        ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=makes_output)
        if makes_output:
            x.name = y.name
        x.type, x.shape = x.type or y.type, x.shape or y.shape
        node.graph.remove(node, safe=True)
        removed += 1
    return removed


def _can_take_output_name(x: ir.Value, identity: ir.Node) -> bool:
    if x.is_graph_input() or x.is_initializer() or x.is_graph_output() or x.graph is not identity.graph:
        return False
    return not any(n is not identity and n.op_type == "Identity" and n.outputs[0].is_graph_output()
                   for n, _ in x.uses())


BLOCK_TAG = "@"  # a node named "<name>@<run>.<index>" reads the weights of that block (sdc.compile.streamed)
BLOCK_ATTRIBUTE = "_sdc_block"


def _keep_blocks_apart(model: ir.Model) -> list[ir.Node]:
    """In a depth-tied graph (sdc.compile.streamed) the blocks of a run read the same weights, so nodes that
    compute only from those weights and block-independent inputs (Flux's AdaLN projections of the time
    embedding) are identical, and CSE would merge them: once untied they are different computations. A
    temporary attribute with the node's block keeps them apart; cleanup removes it right after."""
    tagged = [n for n in model.graph.all_nodes() if n.name and BLOCK_TAG in n.name]
    for n in tagged:
        n.attributes[BLOCK_ATTRIBUTE] = ir.AttrString(BLOCK_ATTRIBUTE, n.name.rpartition(BLOCK_TAG)[2])
    return tagged


def cleanup(model: ir.Model, debug: bool = False) -> PassResult:
    """Simplify in place; counts are nodes removed per op type (negative: nodes added, e.g. none so far)."""
    inputs = [v.name for v in model.graph.inputs]
    outputs = [v.name for v in model.graph.outputs]
    before = op_histogram(model)

    remove_identities(model)
    try:
        for _ in range(2):  # folding exposes no-op rules (x + 0 after a folded `scale`), which expose folding
            optimizer.fold_constants(model, onnx_shape_inference=True)  # also folds Shape chains of known dims
            if not RewriteRuleSet(list(RULES)).apply_to_model(model):
                break  # no rule fired: a second folding would find what the first left, nothing
    finally:
        forget_matches(RULES)
    common.RemoveUnusedNodesPass()(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    apart = _keep_blocks_apart(model)
    common.CommonSubexpressionEliminationPass()(model)  # one Shape(x) per x, one copy of each shape constant
    for node in apart:
        del node.attributes[BLOCK_ATTRIBUTE]
    common.RemoveUnusedNodesPass()(model)
    common.OutputFixPass()(model)

    if [v.name for v in model.graph.inputs] != inputs or [v.name for v in model.graph.outputs] != outputs:
        raise AssertionError(f"cleanup renamed graph inputs/outputs: {inputs}/{outputs} -> "
                             f"{[v.name for v in model.graph.inputs]}/{[v.name for v in model.graph.outputs]}")
    after = op_histogram(model)
    counts = {op: before.get(op, 0) - after.get(op, 0) for op in sorted(set(before) | set(after))}
    counts = {op: n for op, n in counts.items() if n}
    return PassResult(NAME, bool(counts), counts)
