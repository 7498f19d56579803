"""Every failure a user can cause, one type each, with a one-line message naming the file, field and fix.

The CLI maps `SdcError` to a one-line message and exit code 1; anything else is a bug and shows a
traceback only when SDC_DEBUG=1. Kept free of heavy imports: the runtime uses it too.
"""

from __future__ import annotations


class SdcError(Exception):
    """Base class: `str(err)` is the whole user-facing message, one line."""


class ConfigError(SdcError):
    """A config file is missing, unreadable, or has a bad value."""

    def __init__(self, path: object, field: str | None, problem: str, fix: str = ""):
        self.path, self.field, self.problem, self.fix = str(path), field, problem, fix
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}" + (f" ({fix})" if fix else ""))


class UnsupportedConfigError(ConfigError):
    """A valid diffusers option that sdc does not implement: refuse rather than silently ignore it."""

    def __init__(self, path: object, field: str, value: object, supported: str = ""):
        fix = f"sdc supports {supported}" if supported else "sdc does not implement this option"
        super().__init__(path, field, f"unsupported value {value!r}", fix)


class WeightsError(SdcError):
    """Weight files are missing, corrupt, or do not match the config."""


class PickleRefusedError(WeightsError):
    """Only pickle weights (.bin/.ckpt/.pt) were found and the user did not opt in to loading them."""


class ExportError(SdcError):
    """Tracing or ONNX export of a submodel failed."""


class ValidationError(SdcError):
    """An artifact's outputs differ from the Paddle program's beyond tolerance."""


class BundleError(SdcError):
    """A bundle is missing, malformed, tampered with, or of an unknown format version."""


class ChecksumError(BundleError):
    """A bundle file's sha256 or size differs from the manifest."""


class OutputError(SdcError):
    """The output cannot be written: unwritable folder, full disk, another build of the same output running."""


class InputError(SdcError):
    """A bad argument: size not a multiple of 8, steps < 1, output exists without --force, ..."""
