"""A tiny FluxPipeline folder through `sdc build`: T5 and the transformer export, validate and verify; the runtime
says plainly that it cannot generate Flux yet; mismatched folders fail with one line."""

from __future__ import annotations

import json

import pytest

from tests.compile.test_bad_input import assert_nothing_written, assert_one_line_error
from tests.conftest import FIXTURES, run_sdc


@pytest.fixture(scope="module")
def flux_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("flux") / "flux.bundle"
    proc = run_sdc("build", FIXTURES / "flux-tiny", "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_builds_validated_and_verifies(flux_bundle) -> None:
    m = json.loads((flux_bundle / "manifest.json").read_text())
    assert m["source"]["family"] == "flux"
    assert set(m["submodels"]) == {"text_encoder", "text_encoder_2", "transformer", "vae_encoder", "vae_decoder"}
    inputs = {t["name"]: t["shape"] for t in m["submodels"]["transformer"]["inputs"]}
    assert inputs["hidden_states"] == ["batch", "image_tokens", 64]
    assert inputs["rope_cos"] == ["tokens", 16] and inputs["guidance"] == ["batch"]
    assert m["submodels"]["text_encoder_2"]["outputs"][0]["shape"] == ["batch", "sequence", 32]
    assert all(a["validation"]["passed"] for s in m["submodels"].values() for a in s["artifacts"])
    assert (flux_bundle / "tokenizer_2" / "tokenizer.json").is_file()
    assert m["pipeline"]["latent_channels"] == 16 and m["pipeline"]["vae_shift_factor"] == pytest.approx(0.1159)
    assert run_sdc("verify", flux_bundle).returncode == 0


def test_runtime_refuses_to_generate_flux_yet(flux_bundle, tmp_path) -> None:
    proc = run_sdc("generate", flux_bundle, "a cat", "-o", tmp_path / "x.png")
    assert_one_line_error(proc, "Flux bundle")
    assert not (tmp_path / "x.png").exists()


def test_mismatched_text_width_and_reduced_precision_are_refused(fixture_copy, tmp_path) -> None:
    model = fixture_copy("flux-tiny")
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out, "--precision", "fp32,int8"), "--precision", "Flux")
    assert_nothing_written(out)
    cfg = json.loads((model / "transformer" / "config.json").read_text())
    (model / "transformer" / "config.json").write_text(json.dumps(dict(cfg, joint_attention_dim=24)))
    assert_one_line_error(run_sdc("build", model, "-o", out), "joint_attention_dim", "d_model 32")
    assert_nothing_written(out)
