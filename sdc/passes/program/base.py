"""What a program pass returns, and a walk over every op of a PIR JSON program (nested regions included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class ProgramPassResult:
    name: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return any(self.counts.values())


def iter_ops(node) -> Iterator[dict]:
    """Every op dict (`{"#": "1.group_norm", "A": [...], ...}`) anywhere in the program JSON."""
    if isinstance(node, dict):
        if isinstance(node.get("#"), str) and isinstance(node.get("A"), list):
            yield node
        for value in node.values():
            yield from iter_ops(value)
    elif isinstance(node, list):
        for value in node:
            yield from iter_ops(value)


def op_name(op: dict) -> str:
    """`1.group_norm` -> `group_norm` (the prefix is the dialect id)."""
    return op["#"].split(".", 1)[-1]
