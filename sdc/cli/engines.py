"""`sdc engines build`: add TensorRT engines to an existing bundle, in place and atomically (see sdc.engines)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sdc.cli.app import BundleArg, app

engines_app = typer.Typer(help="TensorRT engines of a bundle (built on the GPU host that runs them).",
                          no_args_is_help=True)
app.add_typer(engines_app, name="engines")


@engines_app.command("build")
def build_engines(
    bundle: BundleArg,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Shape profile (default: the bundle's own, "
                                                   "recorded by `sdc build --profile`).")] = None,
) -> None:
    """Build one TensorRT engine per submodel and profile into BUNDLE/engines/<key>/ (weight-stripped plans).

    Needs TensorRT, cuda-python and a GPU; without them it stops with one line and leaves the bundle as it was.
    """
    from sdc.engines import probe
    from sdc.errors import InputError
    from sdc.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)  # a bad bundle fails first, with its own message
    if profile is None and not manifest.get("profiles"):
        raise InputError(f"{bundle} records no shape profile; give --profile (e.g. sd-512) or rebuild it with "
                         "sdc build --profile")
    probe()  # raises with what is missing
    raise InputError("sdc engines build: the TensorRT builder is not written yet (sdc.engines has keys and the "
                     "environment probe only); the bundle is unchanged")
