"""A QDQ graph whose quantization is switched per node and per batch row, for the sensitivity sweep.

Measuring "the output error each layer adds on its own" means running the model once per layer with
only that layer quantized: hundreds of runs for a UNet, each paying for every weight again. Here the
fully quantized QDQ graph (onnxruntime's, so the scales are exactly the artifact's) is rewritten once
so that one run answers many such questions, one per batch row:

- every quantized node n is computed twice, with its dequantized weights and with the fp32 ones,
  and its output is Where(on[row, n], quantized, float);
- an activation t that the quantizer passes through Q/DQ is read quantized, by every reader, in the
  rows where any of its owners is on: its producer (when that is a quantized node that re-quantizes
  its output, Conv -> Q -> DQ) and each quantized node reading it. That is how onnxruntime quantizes
  a subset: one Q/DQ pair per tensor, shared by all its readers;
- `on` is the graph input `sdc_quantize` [rows, nodes] (> 0.5 = on), broadcast over each value.

So row r computes the model with exactly the nodes on in row r quantized. Every input is tiled
along the batch axis, one copy per configuration. This relies on the batch axis being the leading
axis of every value a quantized node reads or writes (true of Conv and of projections on [B, S, C]);
`sdc.compile.sensitivity` checks the all-off and all-on rows against the float and QDQ graphs run
on their own and refuses the sweep if they differ. Nothing fuses into integer kernels (the Where
nodes sit between DQ and op): the values are the exact fake-quantized ones.
"""

from __future__ import annotations

FLAGS = "sdc_quantize"


def switchable(qdq_model, fp32_model, nodes: list[str]) -> int:
    """Rewrite `qdq_model` in place for the quantized `nodes` (flag column k is nodes[k]).

    `fp32_model` supplies the float weights: node names survive quantization, so input i of node n
    in the QDQ graph replaces input i of node n in the fp32 graph. Returns the number of nodes
    switched.
    """
    from onnx import TensorProto, helper

    from sdc.passes.onnx.float16 import infer_types, topological_sort

    g = qdq_model.graph
    infer_types(qdq_model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(g.value_info) + list(g.input) + list(g.output)
            if v.type.tensor_type.HasField("shape")}
    index = {name: i for i, name in enumerate(nodes)}
    producer = {o: n for n in g.node for o in n.output}
    fp32_nodes = {n.name: n for n in fp32_model.graph.node}
    fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
    have = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    extra = []
    gates: dict[tuple[int, int], str] = {}

    def gate(k: int, r: int) -> str:
        """bool [rows, 1, ..., 1] of rank r: node k on in each row."""
        if (k, r) not in gates:
            name = f"sdc_on_{k}_r{r}"
            extra.append(helper.make_node("Constant", [], [name + "_i"], name=name + "_ic",
                                          value=helper.make_tensor(name + "_iv", TensorProto.INT64, [1], [k])))
            extra.append(helper.make_node("Gather", [FLAGS, name + "_i"], [name + "_g"], axis=1, name=name + "_gather"))
            extra.append(helper.make_node("Constant", [], [name + "_s"], name=name + "_sc",
                                          value=helper.make_tensor(name + "_sv", TensorProto.INT64, [r], [-1] + [1] * (r - 1))))
            extra.append(helper.make_node("Reshape", [name + "_g", name + "_s"], [name + "_f"], name=name + "_reshape"))
            extra.append(helper.make_node("Constant", [], [name + "_h"], name=name + "_hc",
                                          value=helper.make_tensor(name + "_hv", TensorProto.FLOAT, [], [0.5])))
            extra.append(helper.make_node("Greater", [name + "_f", name + "_h"], [name], name=name + "_greater"))
            gates[(k, r)] = name
        return gates[(k, r)]

    def rank_of(value: str) -> int:
        if value not in rank:
            raise ValueError(f"sensitivity sweep: the rank of {value!r} is unknown (shape inference failed)")
        return rank[value]

    readers: dict[str, set[str]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, set()).add(n.name)

    def owners_gate(owners: list[int], r: int) -> str:
        """bool [rows, 1, ..., 1]: any of `owners` on in each row."""
        if len(owners) == 1:
            return gate(owners[0], r)
        key = (tuple(owners), r)
        if key not in gates:
            name = f"sdc_any_{'_'.join(map(str, owners))}_r{r}"
            extra.append(helper.make_node("Constant", [], [name + "_i"], name=name + "_ic",
                                          value=helper.make_tensor(name + "_iv", TensorProto.INT64, [len(owners)], owners)))
            extra.append(helper.make_node("Gather", [FLAGS, name + "_i"], [name + "_g"], axis=1, name=name + "_gather"))
            # Sum of the owners' flags (a MatMul with ones: the same at every opset, unlike ReduceMax's axes).
            extra.append(helper.make_node("Constant", [], [name + "_o"], name=name + "_oc",
                                          value=helper.make_tensor(name + "_ov", TensorProto.FLOAT, [len(owners), 1],
                                                                   [1.0] * len(owners))))
            extra.append(helper.make_node("MatMul", [name + "_g", name + "_o"], [name + "_m"], name=name + "_sum"))
            extra.append(helper.make_node("Constant", [], [name + "_s"], name=name + "_sc",
                                          value=helper.make_tensor(name + "_sv", TensorProto.INT64, [r], [-1] + [1] * (r - 1))))
            extra.append(helper.make_node("Reshape", [name + "_m", name + "_s"], [name + "_f"], name=name + "_reshape"))
            extra.append(helper.make_node("Constant", [], [name + "_h"], name=name + "_hc",
                                          value=helper.make_tensor(name + "_hv", TensorProto.FLOAT, [], [0.5])))
            extra.append(helper.make_node("Greater", [name + "_f", name + "_h"], [name], name=name + "_greater"))
            gates[key] = name
        return gates[key]

    def float_view(t: str, t_dq: str) -> str:
        """What every reader of activation t (quantized as t_dq) sees: t_dq in the rows where an owner is on."""
        out = f"{t_dq}__sdc_view"
        if out in have:
            return out
        p = producer.get(t)
        owners = {index[r] for r in readers.get(t_dq, ()) if r in index}
        if p is not None and p.name in index:
            owners.add(index[p.name])
        if not owners:
            return t
        extra.append(helper.make_node("Where", [owners_gate(sorted(owners), rank_of(t)), t_dq, t], [out], name=out))
        have.add(out)
        return out

    def dq_source(value: str):
        """(t, t_dq) when `value` is DQ(Q(t)), else None."""
        d = producer.get(value)
        if d is None or d.op_type != "DequantizeLinear":
            return None
        q = producer.get(d.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        return q.input[0], value

    # 0. A graph output the quantizer passes through Q/DQ (onnxruntime renames the producer's output and
    # lets the DQ write the output name, e.g. CLIP's pooled output read by its quantized projection) is a
    # reader too: the DQ writes a new name, and the output becomes that activation's per-row view (step 3).
    output_views = []
    for out in g.output:
        src = dq_source(out.name)
        if src is None:
            continue
        renamed = out.name + "__sdc_dq"
        producer[out.name].output[0] = renamed
        producer[renamed] = producer.pop(out.name)
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == out.name:
                    n.input[i] = renamed
        readers[renamed] = readers.pop(out.name, set())
        rank[renamed] = rank_of(out.name)
        have.add(renamed)
        output_views.append((src[0], renamed, out.name))
    # 1. Every reader of a Q/DQ'd activation: quantized only in the rows where one of its owners is on.
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, x in enumerate(n.input):
            src = dq_source(x)
            if src is not None:
                n.input[i] = float_view(*src)
    # 2. Quantized nodes: a float twin, and the per-row choice between them.
    switched = 0
    for n in list(g.node):
        if n.name not in index or n.name not in fp32_nodes:
            continue
        ref = fp32_nodes[n.name]
        twin = helper.make_node(n.op_type, [], [], name=n.name + "__sdc_float", domain=n.domain)
        twin.attribute.extend(n.attribute)
        for i, x in enumerate(n.input):
            if x.endswith("__sdc_view"):  # an activation, switched in step 1: the twin reads the same
                twin.input.append(x)
            elif producer.get(x) is not None and producer[x].op_type == "DequantizeLinear":  # weight or bias
                w = ref.input[i]
                alias = w + "__sdc_fp32"  # the quantizer may have named the DQ output after the weight
                if alias not in have:
                    t = type(fp32_inits[w])()
                    t.CopyFrom(fp32_inits[w])
                    t.name = alias
                    g.initializer.append(t)
                    have.add(alias)
                twin.input.append(alias)
            else:
                twin.input.append(x)
        y = n.output[0]
        yq, yf = y + "__sdc_q", y + "__sdc_f"
        n.output[0] = yq
        twin.output.append(yf)
        extra.append(twin)
        extra.append(helper.make_node("Where", [gate(index[n.name], rank_of(y)), yq, yf], [y], name=y + "__sdc_pick"))
        switched += 1
    # 3. The graph outputs of step 0 read their activation's view like any other reader.
    for t, t_dq, name in output_views:
        extra.append(helper.make_node("Identity", [float_view(t, t_dq)], [name], name=name + "__sdc_output"))
    g.input.append(helper.make_tensor_value_info(FLAGS, TensorProto.FLOAT, ["rows", len(nodes)]))
    g.node.extend(extra)
    topological_sort(qdq_model)
    return switched
