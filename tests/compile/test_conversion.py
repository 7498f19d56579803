"""sdc.compile.conversion: the trace's dy2static shortcuts give Paddle's own answers and programs, and leave
Paddle as they found it (the artifacts' bytes are checked by the build tests: test_build_is_deterministic)."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from sdc.compile import conversion  # noqa: E402


class Block(paddle.nn.Layer):
    def __init__(self, width: int):
        super().__init__()
        self.fc = paddle.nn.Linear(width, width)

    def forward(self, x):
        if x.shape[-1] > 0:  # converted control flow, on a dynamic-free dim
            x = self.fc(x)
        return paddle.nn.functional.silu(x) + helper(x)


def helper(x):
    return x * 0.5


class Stack(paddle.nn.Layer):
    def __init__(self, width: int = 4, depth: int = 3):
        super().__init__()
        self.blocks = paddle.nn.LayerList([Block(width) for _ in range(depth)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _trace(state: dict, fast: bool, path):
    """A fresh Stack with weights `state` traced and saved (with or without the shortcuts), loaded back."""
    layer = Stack()
    layer.set_state_dict(state)
    spec = [paddle.static.InputSpec([None, 4], "float32", "x")]
    static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
    with conversion.fast_conversion() if fast else contextlib.nullcontext():
        paddle.jit.save(static, str(path))
    return paddle.jit.load(str(path))


def test_programs_compute_as_paddles_own_and_each_forward_converts_once(tmp_path, monkeypatch):
    from paddle.jit.dy2static import program_translator as translator

    paddle.seed(0)
    layer = Stack()
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    with paddle.no_grad():
        want = layer(x).numpy()
    converted = []
    convert = translator._FUNCTION_CACHE.convert_with_cache
    monkeypatch.setattr(translator._FUNCTION_CACHE, "convert_with_cache", lambda f: converted.append(f) or convert(f))
    monkeypatch.setattr(conversion, "_converted", type(conversion._converted)())  # nothing cached by other traces
    forwards = lambda: sum(getattr(f, "__name__", "") == "forward" for f in converted)  # noqa: E731
    slow = _trace(layer.state_dict(), False, tmp_path / "slow" / "model")
    slow_count = forwards()
    converted.clear()
    fast = _trace(layer.state_dict(), True, tmp_path / "fast" / "model")
    assert slow_count >= 3 + 1 and forwards() == 2  # Paddle: at every Block call; here Block's and Stack's once
    np.testing.assert_array_equal(fast(x).numpy(), slow(x).numpy())
    np.testing.assert_allclose(fast(x).numpy(), want, rtol=1e-6, atol=1e-6)


def test_is_unsupported_answers_as_paddles():
    from paddle.jit.dy2static import convert_call_func as calls

    original = calls.is_unsupported
    probes = [np.mean, np.add, os.path.join, len, paddle.reshape, paddle.nn.functional.silu, helper, Stack().forward,
              lambda x: x, Block, print]
    with conversion.fast_conversion():
        assert calls.is_unsupported is not original
        fast = [calls.is_unsupported(p) for p in probes]
    assert calls.is_unsupported is original
    assert fast == [original(p) for p in probes]
    assert fast[:3] == [True, True, True] and fast[6] is False  # numpy and os are builtin-like; a user function is not


def test_paddle_is_restored_even_when_the_trace_fails():
    from paddle.jit.dy2static import program_translator as translator

    cache = translator._FUNCTION_CACHE
    with pytest.raises(RuntimeError), conversion.fast_conversion():
        assert "convert_with_cache" in vars(cache)
        raise RuntimeError("trace failed")
    assert "convert_with_cache" not in vars(cache)
