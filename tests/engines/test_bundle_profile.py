"""Profiles of a built bundle (`sdc engines build --profile`): the model's facts read back from the manifest
equal the ones the build read from the model's configs, on every family."""

from __future__ import annotations

import pytest

from sdc.errors import InputError
from sdc.profiles import Facts, bundle_profile, parse_profile, submodel_dims
from sdc.runtime.bundle import read_manifest
from tests.conftest import FIXTURES


@pytest.mark.parametrize("fixture, name", [("bundles", "sd1-tiny"), ("bundles", "sd2-tiny"),
                                           ("sdxl_bundles", "sdxl-tiny"), ("sdxl_bundles", "sdxl-refiner-tiny"),
                                           ("flux_bundles", "flux-tiny"), ("flux_bundles", "flux-schnell-tiny")])
def test_facts_from_the_manifest_equal_the_models(request, fixture, name) -> None:
    bundle = request.getfixturevalue(fixture)[name]
    manifest = read_manifest(bundle)
    family = manifest["source"]["family"]
    facts = Facts.of(FIXTURES / name, family)
    assert Facts.of_manifest(manifest) == facts
    step = facts.downscale * facts.multiple
    size = f"{2 * step}x{3 * step}:{4 * step}x{4 * step}:{4 * step}x{6 * step}"
    got = bundle_profile(manifest, size, "1:2:3")
    profile = parse_profile(size, "1:2:3", family)
    assert got["name"] == size and got["batch"] == [1, 2, 3]
    assert got["dims"] == {n: {d: r.to_json() for d, r in submodel_dims(profile, n, sub, facts).items()}
                           for n, sub in manifest["submodels"].items()}
    with pytest.raises(InputError, match="off the model's grid"):
        bundle_profile(manifest, f"{step + 1}x{step}")


def test_no_recorded_profile_needs_one(bundles) -> None:
    with pytest.raises(InputError, match="records no shape profile"):
        bundle_profile(read_manifest(bundles["sd1-tiny"]), None)
    assert bundle_profile(read_manifest(bundles["sd1-tiny"]), "sd-512")["dims"]["unet"]["batch"] == [1, 2, 8]
