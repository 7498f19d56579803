"""One reader for the UTF-8 prompt files sdc commands take (calibration, compare, eval): lines, # comments, errors.

Every command reports the same three problems the same way (missing, not UTF-8, no prompts), each as a
one-line error that names the option and the file.
"""

from __future__ import annotations

from pathlib import Path

from sdc.errors import InputError

MISSING_FIX = "give a UTF-8 text file, one prompt per line"


def read_prompt_file(path: Path, option: str = "", missing_fix: str = MISSING_FIX) -> tuple[list[str], bytes]:
    """(prompts, the file's bytes): stripped non-empty lines that are not # comments.

    `option` prefixes the errors (e.g. "--prompts "); `missing_fix` says what to pass instead of a missing file.
    """
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{option}{src}: prompt file not found; {missing_fix}")
    raw = src.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{option}{src}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InputError(f"{option}{src}: no prompts in it (blank lines and # comments are ignored)")
    return prompts, raw
