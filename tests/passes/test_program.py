"""Program passes: float64 attributes that paddle2onnx 2.1.0 misreads, on a program written like paddlepaddle 3.3's.

paddlepaddle 3.2.2 (pinned) writes these attributes as float32; the test simulates 3.3 by retyping
them in the saved program, shows what paddle2onnx then does, and checks the pass undoes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddle2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import paddle.nn.functional as F  # noqa: E402
from paddle import nn  # noqa: E402

from sdc.passes.program import run_program_passes  # noqa: E402
from sdc.passes.program.base import iter_ops  # noqa: E402
from sdc.passes.program.float64_attributes import float64_attributes  # noqa: E402

EPS = 1e-6


class NormUpsample(nn.Layer):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(2, 4, epsilon=EPS)

    def forward(self, x):
        return F.interpolate(self.norm(x), scale_factor=2.0, mode="nearest")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(program json path, layer) of the tiny module as paddlepaddle 3.2.2 saves it."""
    paddle.seed(0)
    layer = NormUpsample()
    layer.eval()
    with paddle.no_grad():  # near-constant channels make epsilon matter
        layer.norm.weight.set_value(np.array([1.0, 2.0, 0.5, 1.5], np.float32))
    spec = [paddle.static.InputSpec([None, 4, None, None], "float32", "x")]
    prefix = tmp_path_factory.mktemp("program") / "model"
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), str(prefix))
    return prefix.with_suffix(".json"), layer


def as_paddle_33(text: str) -> str:
    """Retype group_norm.epsilon and interpolation scales as float64, the way paddlepaddle 3.3 writes them."""
    program = json.loads(text)
    n = 0
    for op in iter_ops(program):
        for attr in op["A"]:
            if isinstance(attr, dict) and attr.get("N") in ("epsilon", "scale"):
                values = attr["AT"]["D"] if attr["AT"]["#"] == "0.a_array" else [attr["AT"]]
                for v in values:
                    assert v["#"] == "0.a_f32"
                    v["#"] = "0.a_f64"
                    n += 1
    assert n == 3  # epsilon + two scales
    return json.dumps(program)


def export(program, out) -> str:
    """'' when paddle2onnx (in the build's worker process) exported the program, else its error."""
    from sdc.compile.p2o import run_paddle2onnx
    from sdc.errors import ExportError

    try:
        run_paddle2onnx(Path(program), Path(out), 17, "test")
    except ExportError as e:
        return str(e)
    return ""


def test_paddle_322_program_is_left_alone(saved, tmp_path):
    program, _ = saved
    before = program.read_text()
    copy = tmp_path / "model.json"
    copy.write_text(before)
    assert run_program_passes(copy) == {"float64_attributes": {}}
    assert copy.read_text() == before


def test_float64_attributes_are_retyped_and_export_is_right(saved, tmp_path):
    program, layer = saved
    bad = tmp_path / "model.json"
    bad.write_text(as_paddle_33(program.read_text()))

    # The trap, reproduced: paddle2onnx 2.1.0 cannot convert the float64-typed interpolation scale.
    unfixed = export(bad, tmp_path / "unfixed.onnx")
    assert "paddle2onnx failed" in unfixed

    assert run_program_passes(bad) == {"float64_attributes": {"group_norm.epsilon": 1, "nearest_interp.scale": 1}}
    assert run_program_passes(bad) == {"float64_attributes": {}}  # idempotent
    failure = export(bad, tmp_path / "fixed.onnx")
    assert failure == "", failure
    model = onnx.load(str(tmp_path / "fixed.onnx"))
    (inorm,) = [n for n in model.graph.node if n.op_type == "InstanceNormalization"]
    (eps,) = [a.f for a in inorm.attribute if a.name == "epsilon"]
    assert eps == pytest.approx(EPS, rel=1e-6)


def test_group_norm_epsilon_alone_is_silently_wrong_without_the_pass(saved, tmp_path):
    """Only the epsilon retyped: paddle2onnx exports without complaint, with a garbage epsilon."""
    program, _ = saved
    data = json.loads(program.read_text())
    for op in iter_ops(data):
        if op["#"].endswith("group_norm"):
            for attr in op["A"]:
                if isinstance(attr, dict) and attr.get("N") == "epsilon":
                    attr["AT"]["#"] = "0.a_f64"
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(data))
    assert export(bad, tmp_path / "unfixed.onnx") == ""
    model = onnx.load(str(tmp_path / "unfixed.onnx"))
    (eps,) = [a.f for n in model.graph.node if n.op_type == "InstanceNormalization" for a in n.attribute
              if a.name == "epsilon"]
    assert eps != pytest.approx(EPS, rel=1e-3)  # what validation exists to catch
    assert float64_attributes(json.loads(bad.read_text())).counts == {"group_norm.epsilon": 1}


def test_unlisted_float64_attributes_are_kept():
    program = {"ops": [{"#": "1.full", "A": [{"AT": {"#": "0.a_f64", "D": 0.1}, "N": "value"}]}]}
    assert float64_attributes(program).counts == {}
    assert program["ops"][0]["A"][0]["AT"]["#"] == "0.a_f64"
