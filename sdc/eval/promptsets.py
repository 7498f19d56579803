"""The prompt sets shipped in sdc/eval/prompts/ (train, heldout, ci): how they are made and how they are read.

The files are generated from the world's grammar by `python -m sdc.eval.promptsets` and committed, so
the training script and `sdc eval` read the same lists and a test checks that they still match the
grammar. train.txt is every caption whose (colour, shape, background) combination is not held out;
heldout.txt asks for exactly those held-out combinations, so its score measures composition, not recall.

The sets cover what the shipped model (models/tiny-shapes) is trained on, SCOPE: colour, shape and
background always, plus size. The grammar and the scorer also know counts and positions, but a model of
this size trained for 20 minutes did not learn them (measured with scripts/train_tiny.py on the whole
grammar: count 58%, position 5% of held-out images right, and the plain captions fell to 6%, because a
caption no longer set the layout); they stay in the world for a larger model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sdc.eval import world

PROMPT_DIR = Path(__file__).parent / "prompts"
SETS = ("train", "heldout", "ci")
SCOPE = ("size",)  # optional attributes the shipped model is trained on and judged by
# Held-out combinations are asked for plainly and with each size.
VARIANTS = (dict(), dict(size="small"), dict(size="large"))
CI_PICK = (0, 4, 8, 9, 13, 17, 21, 25)  # heldout.txt lines in ci.txt: every shape, plain, small and large


def in_scope(p: world.Prompt, scope: tuple[str, ...] = SCOPE) -> bool:
    """Whether a prompt asks only for the optional attributes in `scope` (besides colour, shape, background)."""
    asked = {"size": p.size is not None, "count": p.count != 1, "position": p.position is not None}
    return all(name in scope or not used for name, used in asked.items())


def training_prompts() -> list[world.Prompt]:
    held = world.heldout_triples()
    return [p for p in world.all_prompts() if p.triple not in held and in_scope(p)]


def heldout_prompts() -> list[world.Prompt]:
    return [replace(world.Prompt(colour, shape, bg), **v) for colour, shape, bg in sorted(world.heldout_triples())
            for v in VARIANTS]


def generated(name: str) -> list[str]:
    """The lines a prompt set should hold, from the grammar."""
    if name == "train":
        return [world.caption(p) for p in training_prompts()]
    heldout = [world.caption(p) for p in heldout_prompts()]
    return heldout if name == "heldout" else [heldout[i] for i in CI_PICK]


def read_prompts(source: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a shipped set ("train", "heldout", "ci") or of a text file."""
    from sdc.prompt_file import MISSING_FIX, read_prompt_file

    path = PROMPT_DIR / f"{source}.txt" if source in SETS else Path(source)
    return read_prompt_file(path, missing_fix=f"{MISSING_FIX}, or one of {', '.join(SETS)}")[0]


def write_all() -> None:
    PROMPT_DIR.mkdir(exist_ok=True)
    for name in SETS:
        (PROMPT_DIR / f"{name}.txt").write_text("\n".join(generated(name)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_all()
