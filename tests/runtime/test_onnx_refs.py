"""sdc.runtime.onnx_refs: every external-data location in a graph, found without the `onnx` package, and
malformed files refused (the bundle reader relies on it before ONNX Runtime opens anything)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdc.runtime import onnx_refs
from sdc.runtime.onnx_refs import OnnxParseError, external_data_locations


@pytest.fixture(params=["scan", "walk"])
def reader(request, monkeypatch):
    """Both ways a file is read: small files are scanned for b"location" first, large ones walked."""
    if request.param == "walk":
        monkeypatch.setattr(onnx_refs, "QUICK_SCAN_BYTES", 0)
    return external_data_locations


def _model(weight: np.ndarray) -> onnx.ModelProto:
    w = numpy_helper.from_array(weight, "w")
    then = helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(weight, "c"))],
                             "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["w"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph)


def test_inline_graph_has_none_even_when_its_weights_spell_location(tmp_path, reader):
    weight = np.frombuffer(b"location" * 8, dtype=np.float32).copy()  # the bytes the quick scan looks for
    onnx.save_model(_model(weight), str(tmp_path / "m.onnx"))
    assert b"location" in (tmp_path / "m.onnx").read_bytes()
    assert reader(tmp_path / "m.onnx") == []


def test_locations_in_initializers_and_subgraph_attributes(tmp_path, reader):
    model = _model(np.arange(64, dtype=np.float32))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0, convert_attribute=True)
    # the initializer and the Constant inside the If's then-branch both point into the data file
    assert reader(tmp_path / "m.onnx") == ["m.onnx.data", "m.onnx.data"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_malformed_files_are_refused(tmp_path, damage, reader):
    onnx.save_model(_model(np.arange(64, dtype=np.float32)), str(tmp_path / "m.onnx"))
    raw = (tmp_path / "m.onnx").read_bytes()
    raw = {"empty": b"", "truncated": raw[: len(raw) - 7], "garbage": b"\xff" * 40}[damage]
    (tmp_path / "m.onnx").write_bytes(raw)
    with pytest.raises(OnnxParseError):
        reader(tmp_path / "m.onnx")
