"""Shape profiles (sdc.profiles): the arithmetic per family, the refusals, and a build that validates at the corners."""

from __future__ import annotations

import json

import pytest

from sdc.errors import InputError
from sdc.profiles import NAMED, Facts, Range, corners, parse_profile, submodel_dims
from tests.conftest import FIXTURES, run_sdc


def dims_of(fixture: str, profile: str, batch: str | None = None, text: str | None = None) -> dict:
    from sdc.graphs.configs import load_model_index
    from sdc.graphs.family import resolve_configs
    from sdc.graphs.specs import spec_for

    model = FIXTURES / fixture
    index = load_model_index(model)
    names = [n for n in ("text_encoder", "text_encoder_2", "unet", "transformer", "vae_encoder", "vae_decoder")
             if index.has("vae" if n.startswith("vae_") else n)]
    p = parse_profile(profile, batch, index.family, text)
    facts = Facts.of(model, index.family)
    return {n: {d: r.to_json() for d, r in submodel_dims(p, n, spec_for(n, cfg), facts).items()}
            for n, cfg in resolve_configs(model, index, names).items()}


def test_sd_dims_follow_the_vae_and_guidance() -> None:
    d = dims_of("sd1-tiny", "64x64:64x96:128x96", "1:2:3")  # sd1-tiny: VAE downscale 8, UNet multiple 4
    assert d["unet"] == {"batch": [1, 4, 6], "latent_height": [8, 8, 16], "latent_width": [8, 12, 12],
                         "sequence": [77, 77, 77]}
    assert d["text_encoder"] == {"batch": [1, 4, 6], "sequence": [77, 77, 77]}
    assert d["vae_decoder"]["batch"] == [1, 2, 3] and d["vae_encoder"]["height"] == [64, 64, 128]


def test_sdxl_both_encoders_and_the_refiner() -> None:
    d = dims_of("sdxl-tiny", "64x96")
    assert d["unet"]["latent_width"] == [12, 12, 12] and d["text_encoder_2"]["sequence"] == [77, 77, 77]
    assert dims_of("sdxl-refiner-tiny", "128x64")["text_encoder_2"]["batch"] == [1, 2, 2]
    with pytest.raises(InputError, match="multiples of 64"):  # the refiner's UNet has one level more
        dims_of("sdxl-refiner-tiny", "96x64")


def test_flux_tokens_are_image_plus_text() -> None:
    d = dims_of("flux-tiny", "64x64:64x96:128x128", "1:1:2", "16:64:128")  # VAE downscale 2: 2x2 patches of 4 px
    t = d["transformer"]
    assert t["image_tokens"] == [16 * 16, 16 * 24, 32 * 32] and t["text_tokens"] == [16, 64, 128]
    assert t["tokens"] == [16 * 16 + 16, 16 * 24 + 64, 32 * 32 + 128] and t["batch"] == [1, 1, 4]
    assert d["text_encoder_2"]["sequence"] == [16, 64, 128] and d["text_encoder"]["sequence"] == [77, 77, 77]
    s = dims_of("flux-schnell-tiny", "64x96")  # 3-level VAE: downscale 4, tokens of 8x8 pixels
    assert s["transformer"]["image_tokens"] == [8 * 12] * 3 and s["transformer"]["text_tokens"] == [512] * 3


@pytest.mark.parametrize("fixture,profile,batch,needle", [
    ("sd1-tiny", "66x64", None, "height 66 is off the model's grid; sizes must be multiples of 32"),
    ("flux-schnell-tiny", "64x68", None, "width 68 is off the model's grid; sizes must be multiples of 8"),
    ("sd1-tiny", "128x128:64x64:256x256", None, "need 0 < min <= opt <= max"),
    ("sd1-tiny", "64x64", "4:2:1", "--batch '4:2:1'"),
    ("sd1-tiny", "64x64", "0", "need 0 < min"),
    ("sd1-tiny", "big", None, "give a name"),
    ("sd1-tiny", "flux-512-1024", None, "a flux profile, and this is a sd model"),
    ("sd1-tiny", "64x64:96x96", None, "give a name"),
])
def test_bad_profiles_are_refused(fixture, profile, batch, needle) -> None:
    with pytest.raises(InputError, match=needle.replace("(", r"\(").replace("'", "'")):
        dims_of(fixture, profile, batch)


def test_named_profiles_and_corners() -> None:
    assert {p.family for p in NAMED.values()} == {"sd", "sdxl", "flux"}
    p = parse_profile("sd-dynamic", "2:2:8", "sd")
    assert p.batch == Range(2, 2, 8) and p.height == Range(256, 512, 1024)
    assert corners({"a": Range(1, 2, 3), "b": Range.static(5)}) == ({"a": 1, "b": 5}, {"a": 3, "b": 5})
    assert corners({"a": Range.static(4)}) == ({"a": 4},)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One profiled build through the CLI for this module's tests: (the finished process, its bundle)."""
    out = tmp_path_factory.mktemp("profiled") / "p.bundle"
    proc = run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--only", "unet", "--profile", "32x32:64x64:64x96",
                   "--batch", "1:1:2")
    return proc, out


def test_build_validates_at_the_profile_corners(profiled) -> None:
    proc, out = profiled
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    (profile,) = m["profiles"]
    assert profile["batch"] == [1, 1, 2] and profile["dims"]["unet"]["latent_width"] == [4, 8, 12]
    for art in m["submodels"]["unet"]["artifacts"]:
        assert art["validation"]["shapes"] == [{"batch": 1, "sequence": 77, "latent_height": 4, "latent_width": 4},
                                               {"batch": 4, "sequence": 77, "latent_height": 8, "latent_width": 12}]


def test_build_refuses_a_profile_off_the_grid_before_any_work(tmp_path) -> None:
    from tests.compile.test_bad_input import assert_nothing_written, assert_one_line_error

    out = tmp_path / "p.bundle"
    assert_one_line_error(run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--profile", "30x32"), "off the model's grid")
    assert_nothing_written(out)
    assert_one_line_error(run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--batch", "2"), "--profile")


def test_profile_record_is_shown_and_type_checked(profiled, tmp_path) -> None:
    import shutil

    from tests.compile.test_bad_input import assert_one_line_error

    proc, out = profiled
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = run_sdc("inspect", out)
    assert ("profile 32x32:64x64:64x96: batch 1:1:2, height 32:64:64, width 32:64:96"
            in " ".join(shown.stdout.split())), shown.stdout
    bad = tmp_path / "bad.bundle"
    shutil.copytree(out, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["profiles"][0]["height"] = [64, "x", 64]
    (bad / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_sdc("inspect", bad), "profiles[0].height", "three positive integers")
