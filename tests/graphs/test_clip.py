"""The Paddle CLIP text encoder against transformers' outputs stored in the fixtures (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from sdc.graphs import build, load  # noqa: E402
from sdc.graphs.configs import load_clip_config  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ATOL = 1e-4


def _cases(family: str, name: str = "text_encoder") -> dict[str, dict[str, np.ndarray]]:
    refs = np.load(FIXTURES / "refs" / family / f"{name}.npz")
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key in refs.files:
        case, tensor = key.split("/", 1)
        cases.setdefault(case, {})[tensor] = refs[key]
    return cases


@pytest.mark.parametrize("family,name", [("sd1-tiny", "text_encoder"), ("sd2-tiny", "text_encoder"),
                                         ("sdxl-tiny", "text_encoder"), ("sdxl-tiny", "text_encoder_2"),
                                         ("sdxl-refiner-tiny", "text_encoder_2")])
def test_matches_transformers(family: str, name: str) -> None:
    """SDXL's text_encoder_2 (projection, GELU, fp16 storage) adds text_embeds to the outputs."""
    layer = load(FIXTURES / family, name)
    cases = _cases(family, name)
    assert set(cases) >= {"b1", "b2", "s16"}
    for case, ref in sorted(cases.items()):
        with paddle.no_grad():
            out = layer(paddle.to_tensor(ref["input_ids"]))
        assert len(out) == len(layer.output_names)
        for name, tensor in zip(layer.output_names, out):
            got = tensor.numpy()
            assert got.shape == ref[name].shape, (case, name)
            err = float(np.abs(got - ref[name]).max())
            print(f"{family} {case} {name}: max abs {err:.2e}")
            assert err <= ATOL, (family, case, name, err)


def _tiny_config(tmp_path: Path, **overrides) -> Path:
    cfg = dict(
        architectures=["CLIPTextModel"], vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=12, hidden_act="gelu", layer_norm_eps=1e-5, eos_token_id=9,
        projection_dim=16,
    )
    cfg.update(overrides)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _randomise(layer) -> None:
    """Random values everywhere (norms and biases too), so a wrong pooling row cannot hide."""
    rng = np.random.default_rng(0)
    for p in layer.parameters():
        p.set_value(rng.standard_normal(p.shape).astype(np.float32) * 0.5)


def test_with_projection(tmp_path: Path) -> None:
    cfg = load_clip_config(_tiny_config(tmp_path, architectures=["CLIPTextModelWithProjection"], projection_dim=8))
    layer = build("text_encoder_2", cfg)
    _randomise(layer)
    names = set(layer.state_dict())
    assert "text_projection.weight" in names and "text_projection.bias" not in names
    assert layer.output_names == ("last_hidden_state", "pooler_output", "text_embeds", "hidden_states_penultimate")
    ids = np.array([[1, 5, 9, 0, 0, 0, 0], [1, 7, 3, 4, 9, 9, 0]], dtype=np.int64)
    with paddle.no_grad():
        last, pooled, text_embeds, penultimate = (t.numpy() for t in layer(paddle.to_tensor(ids)))
    assert last.shape == penultimate.shape == (2, 7, 16)
    assert pooled.shape == (2, 16)
    assert text_embeds.shape == (2, 8)
    np.testing.assert_allclose(text_embeds, pooled @ layer.text_projection.weight.numpy(), atol=1e-5)


@pytest.mark.parametrize("eos, expected", [(9, [2, 4]), (2, [3, 1])])
def test_pooling_position(tmp_path: Path, eos: int, expected: list[int]) -> None:
    """First EOS for current configs; argmax(input_ids) for the legacy eos_token_id == 2."""
    layer = build("text_encoder", load_clip_config(_tiny_config(tmp_path, eos_token_id=eos)))
    _randomise(layer)
    # Row 0: largest id 40 at position 3, first 9 at 2. Row 1: largest 50 at 1, first 9 at 4 (and again at 5).
    ids = np.array([[1, 5, 9, 40, 0, 9], [1, 50, 3, 4, 9, 9]], dtype=np.int64)
    with paddle.no_grad():
        last, pooled, _ = (t.numpy() for t in layer(paddle.to_tensor(ids)))
    np.testing.assert_array_equal(pooled, last[np.arange(2), expected])


def test_penultimate_is_input_of_last_layer(tmp_path: Path) -> None:
    layer = build("text_encoder", load_clip_config(_tiny_config(tmp_path, num_hidden_layers=3)))
    _randomise(layer)
    ids = paddle.to_tensor(np.array([[1, 5, 9, 2]], dtype=np.int64))
    with paddle.no_grad():
        _, _, penultimate = layer(ids)
        mask = layer._causal_mask(paddle.shape(ids)[1], paddle.float32)
        h = layer.embeddings(ids)
        for block in layer.encoder.layers[:-1]:
            h = block(h, mask)
    np.testing.assert_array_equal(penultimate.numpy(), h.numpy())


def test_causal(tmp_path: Path) -> None:
    """Changing a later token leaves earlier positions' states unchanged."""
    layer = build("text_encoder", load_clip_config(_tiny_config(tmp_path)))
    _randomise(layer)
    a = np.array([[1, 5, 6, 7, 9]], dtype=np.int64)
    b = a.copy()
    b[0, 3] = 8
    with paddle.no_grad():
        la = layer(paddle.to_tensor(a))[0].numpy()
        lb = layer(paddle.to_tensor(b))[0].numpy()
    np.testing.assert_allclose(la[:, :3], lb[:, :3], atol=1e-6)
    assert np.abs(la[:, 3:] - lb[:, 3:]).max() > 1e-3
