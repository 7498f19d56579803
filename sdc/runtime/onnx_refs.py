"""The external-data file names written inside an ONNX graph, read without the `onnx` package.

ONNX Runtime opens whatever an initializer's `external_data` `location` says, relative to the
graph's folder; a bundle from someone else could point it anywhere. The runtime does not depend on
`onnx` (it is a build extra) and must check this before a session is created, so this walks the
protobuf wire format directly: ModelProto.graph and .functions, every GraphProto's initializers,
sparse initializers and node attributes (tensors, subgraphs of If/Loop/Scan), and returns each
TensorProto's `location` entry. Weight payloads are skipped by their length, never read: a 1 GB
inline graph costs only a walk over its field headers.
"""

from __future__ import annotations

import mmap
from pathlib import Path


class OnnxParseError(ValueError):
    """The file is not a well-formed ONNX protobuf (truncated, garbage)."""


# Field numbers from onnx.proto (onnx 1.17).
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
FUNCTION_NODE = 7
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_EXTERNAL_DATA = 13
ENTRY_KEY, ENTRY_VALUE = 1, 2
QUICK_SCAN_BYTES = 64 << 20  # files up to this size are scanned for b"location" before any walk
MAX_DEPTH = 64  # nested subgraphs; deeper is refused rather than recursed into


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxParseError("truncated or malformed varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, start, end) of every length-delimited field in buf[start:end]; others skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxParseError("field number 0")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxParseError("a field runs past the end of its message (truncated file?)")
            yield number, pos, pos + length
            pos += length
            continue
        else:
            raise OnnxParseError(f"unsupported wire type {wire}")
        if pos > end:
            raise OnnxParseError("truncated field")


def _tensor(buf, start: int, end: int, out: list[str]) -> None:
    for number, s, e in _fields(buf, start, end):
        if number == TENSOR_EXTERNAL_DATA:
            key = value = None
            for n, a, b in _fields(buf, s, e):
                if n == ENTRY_KEY:
                    key = bytes(buf[a:b])
                elif n == ENTRY_VALUE:
                    value = bytes(buf[a:b])
            if key == b"location":
                try:
                    out.append((value or b"").decode("utf-8"))
                except UnicodeDecodeError:
                    raise OnnxParseError("an external data location is not UTF-8")


def _sparse(buf, start: int, end: int, out: list[str]) -> None:
    for number, s, e in _fields(buf, start, end):
        if number in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(buf, s, e, out)


def _node(buf, start: int, end: int, out: list[str], depth: int) -> None:
    for number, s, e in _fields(buf, start, end):
        if number != NODE_ATTRIBUTE:
            continue
        for n, a, b in _fields(buf, s, e):
            if n in (ATTR_T, ATTR_TENSORS):
                _tensor(buf, a, b, out)
            elif n in (ATTR_G, ATTR_GRAPHS):
                _graph(buf, a, b, out, depth + 1)
            elif n in (ATTR_SPARSE, ATTR_SPARSES):
                _sparse(buf, a, b, out)


def _graph(buf, start: int, end: int, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise OnnxParseError(f"subgraphs nested deeper than {MAX_DEPTH}")
    for number, s, e in _fields(buf, start, end):
        if number == GRAPH_INITIALIZER:
            _tensor(buf, s, e, out)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse(buf, s, e, out)
        elif number == GRAPH_NODE:
            _node(buf, s, e, out, depth)


def external_data_locations(path: Path) -> list[str]:
    """Every external-data `location` in the ONNX file at `path`, in file order (duplicates kept)."""
    out: list[str] = []
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise OnnxParseError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            # An entry keyed "location" holds those bytes verbatim: without them in the file there is
            # none, and the walk below only checks the model's top-level fields (a small graph of inline
            # weights then costs one C-speed scan, not a walk of its nodes). A large file is walked: the
            # walk skips weight payloads unread, a scan would page all of them in.
            deep = size > QUICK_SCAN_BYTES or buf.find(b"location") >= 0
            graphs = 0
            for number, s, e in _fields(buf, 0, size):
                if number == MODEL_GRAPH:
                    graphs += 1
                    if deep:
                        _graph(buf, s, e, out, 0)
                elif number == MODEL_FUNCTIONS and deep:
                    for n, a, b in _fields(buf, s, e):
                        if n == FUNCTION_NODE:
                            _node(buf, a, b, out, 0)
            if graphs == 0:
                raise OnnxParseError("no graph in the model")
    return out
