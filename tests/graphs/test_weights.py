"""Weight loading on the real fixtures, deliberately broken: each failure is one WeightsError naming the file and fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sdc.errors import PickleRefusedError, WeightsError
from sdc.graphs.weights import canonical_key, find_weight_files, read_weights
from tests.conftest import FIXTURES

paddle = pytest.importorskip("paddle")

from sdc.graphs import load  # noqa: E402

VAE_FILE = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture
def model(tmp_path):
    dst = tmp_path / "sd1-tiny"  # fp32 VAE: safetensors' numpy API (used to break files) has no bf16
    shutil.copytree(FIXTURES / "sd1-tiny", dst)
    return dst


def _rewrite(path, change) -> None:
    tensors = {k: np.array(v) for k, v in load_file(str(path)).items()}
    change(tensors)
    save_file(tensors, str(path))


def test_corrupt_header(model):
    path = model / VAE_FILE
    raw = bytearray(path.read_bytes())
    raw[8:40] = b"\xff" * 32  # garbage inside the JSON header
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"corrupt safetensors header; download it again") as e:
        load(model, "vae_decoder")
    assert str(path) in str(e.value)


def test_not_a_safetensors_file(model):
    (model / VAE_FILE).write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(WeightsError, match="not a safetensors file or truncated"):
        load(model, "vae_encoder")


def test_truncated(model):
    path = model / VAE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"file is truncated \(\d+ bytes, header says \d+\)"):
        load(model, "vae_decoder")


def test_missing_key(model):
    _rewrite(model / VAE_FILE, lambda t: t.pop("decoder.conv_out.bias"))
    with pytest.raises(WeightsError, match=r"missing keys: decoder.conv_out.bias") as e:
        load(model, "vae_decoder")
    assert "weights do not match config.json" in str(e.value) and "\n" not in str(e.value)
    load(model, "vae_encoder")  # the encoder half does not need that key


def test_unexpected_key_and_wrong_shape(model):
    def change(t):
        t["decoder.extra.weight"] = np.zeros(3, np.float32)
        t["decoder.conv_in.bias"] = np.zeros(7, t["decoder.conv_in.bias"].dtype)

    _rewrite(model / VAE_FILE, change)
    with pytest.raises(WeightsError) as e:
        load(model, "vae_decoder")
    msg = str(e.value)
    assert "unexpected keys: decoder.extra.weight" in msg
    assert "shape mismatches: decoder.conv_in.bias [7] (model expects [" in msg


def test_bf16_and_fp16_weights_load_exactly():
    """sd2-tiny stores the VAE in bf16 and the text encoder in fp16: both read without loss."""
    model = FIXTURES / "sd2-tiny"
    tensors = read_weights(find_weight_files(model / "vae"))
    w = tensors["decoder.conv_in.weight"]
    assert w.dtype == np.float32
    bits = w.view(np.uint32)
    assert not np.any(bits & 0xFFFF)  # bf16 widened: low mantissa bits are zero
    te = read_weights(find_weight_files(model / "text_encoder"))
    assert {a.dtype for a in te.values() if a.dtype.kind == "f"} == {np.dtype(np.float16)}


def test_missing_shard(tmp_path):
    dst = tmp_path / "sd1"
    shutil.copytree(FIXTURES / "sd1-tiny", dst)
    index = json.loads((dst / "unet" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[3]
    (dst / "unet" / victim).unlink()
    with pytest.raises(WeightsError, match=f"shard files missing: {victim}; download them too"):
        load(dst, "unet")


def test_pickle_refused_without_opt_in(model):
    (model / VAE_FILE).unlink()
    (model / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        load(model, "vae_decoder")


@pytest.mark.parametrize("key, want", [
    ("text_model.encoder.layers.0.mlp.fc1.weight", "encoder.layers.0.mlp.fc1.weight"),
    ("encoder.layers.0.mlp.fc1.weight", "encoder.layers.0.mlp.fc1.weight"),
    ("encoder.mid_block.attentions.0.query.weight", "encoder.mid_block.attentions.0.to_q.weight"),
    ("decoder.mid_block.attentions.0.proj_attn.bias", "decoder.mid_block.attentions.0.to_out.0.bias"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
     "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"),
])
def test_canonical_names(key, want):
    assert canonical_key(key) == want


def test_legacy_vae_attention_checkpoint_loads_identically(model):
    """A VAE saved with the old `query/key/value/proj_attn` names (1x1-conv shaped) gives the same module."""
    ref = load(model, "vae_decoder")

    def legacy(t):
        for k in [k for k in t if ".mid_block.attentions.0." in k]:
            new = k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn")
            v = t.pop(k)
            t[new] = v[:, :, None, None] if v.ndim == 2 else v  # some old files store them as 1x1 convs
    _rewrite(model / VAE_FILE, legacy)
    old = load(model, "vae_decoder")
    for (name, a), (_, b) in zip(ref.state_dict().items(), old.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), name
