"""A minimal reader for the metadata section of a GGUF file: scalar values, and the length of arrays.

The ``gguf`` package's reader builds numpy objects for every field, the 50k-entry token list included,
which cost the gateway ~60 MB of RSS per model at startup. The estimate needs a dozen integers, so this reads
them with ``struct`` and skips everything else. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

Value = int | float | bool | str


class GgufError(ValueError):
    pass


def _read(f: BinaryIO, fmt: str) -> tuple[int | float | bool, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GgufError("unexpected end of file in the metadata")
    return struct.unpack(fmt, data)


def _string(f: BinaryIO) -> str:
    (length,) = _read(f, "<Q")
    if length > 1 << 24:
        raise GgufError(f"implausible string length {length}")
    return f.read(int(length)).decode("utf-8", errors="replace")


def _skip(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        (length,) = _read(f, "<Q")
        f.seek(int(length), 1)
    elif vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    else:
        raise GgufError(f"unknown value type {vtype}")


_SMALL_ARRAY = 4096  # integer arrays up to this length are kept whole (per-layer patterns); longer: skipped
_INTEGERS = {0, 1, 2, 3, 4, 5, 7, 10, 11}


@dataclass(frozen=True)
class Tensor:
    name: str
    ggml_type: int
    elements: int


@dataclass(frozen=True)
class GgufFile:
    """Scalars by key; an array as its length (``tokenizer.ggml.tokens`` -> vocabulary size); short integer
    arrays also whole in ``arrays`` (e.g. a per-layer ``sliding_window_pattern``); and every tensor's name,
    type and element count."""

    metadata: dict[str, Value]
    arrays: dict[str, tuple[int, ...]]
    tensors: tuple[Tensor, ...]


def _header(f: BinaryIO) -> tuple[int, int]:
    if f.read(4) != b"GGUF":
        raise GgufError("not a GGUF file (bad magic)")
    (version,) = _read(f, "<I")
    if version < 2:
        raise GgufError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = _read(f, "<QQ")
    if kv_count > 1 << 20 or tensor_count > 1 << 24:
        raise GgufError(f"implausible metadata count {kv_count} or tensor count {tensor_count}")
    return int(tensor_count), int(kv_count)


def _metadata(f: BinaryIO, kv_count: int, arrays: dict[str, tuple[int, ...]]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for _ in range(kv_count):
        key = _string(f)
        vtype = int(_read(f, "<I")[0])
        if vtype == _STRING:
            out[key] = _string(f)
        elif vtype == _ARRAY:
            etype, count = (int(v) for v in _read(f, "<IQ"))
            if etype in _INTEGERS and count <= _SMALL_ARRAY:
                fmt = _SCALARS[etype]
                arrays[key] = tuple(int(v) for v in _read(f, "<" + fmt[1] * count))
            elif etype in _SCALARS:
                f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
            else:
                for _ in range(count):
                    _skip(f, etype)
            out[key] = count
        elif vtype in _SCALARS:
            out[key] = _read(f, _SCALARS[vtype])[0]
        else:
            raise GgufError(f"unknown value type {vtype} for '{key}'")
    return out


def read_metadata(path: Path) -> dict[str, Value]:
    """Scalars by key; an array is given as its length (e.g. ``tokenizer.ggml.tokens`` -> vocabulary size)."""
    with path.open("rb") as f:
        _, kv_count = _header(f)
        return _metadata(f, kv_count, {})


def read_gguf(path: Path) -> GgufFile:
    """The metadata, the short integer arrays and the tensor directory (no tensor data is read)."""
    arrays: dict[str, tuple[int, ...]] = {}
    tensors = []
    with path.open("rb") as f:
        tensor_count, kv_count = _header(f)
        meta = _metadata(f, kv_count, arrays)
        for _ in range(tensor_count):
            name = _string(f)
            (n_dims,) = _read(f, "<I")
            if n_dims > 8:
                raise GgufError(f"tensor {name} has {n_dims} dimensions")
            elements = 1
            for dim in _read(f, "<" + "Q" * int(n_dims)):
                elements *= int(dim)
            ggml_type, _offset = _read(f, "<IQ")
            tensors.append(Tensor(name, int(ggml_type), elements))
    return GgufFile(meta, arrays, tuple(tensors))
