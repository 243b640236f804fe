"""A minimal reader for the metadata section of a GGUF file: scalar values, and the length of arrays.

The ``gguf`` package's reader builds numpy objects for every field, the 50k-entry token list included,
which cost the gateway ~60 MB of RSS per model at startup. The estimate needs a dozen integers, so this reads
them with ``struct`` and skips everything else. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
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


def read_metadata(path: Path) -> dict[str, Value]:
    """Scalars by key; an array is given as its length (e.g. ``tokenizer.ggml.tokens`` -> vocabulary size)."""
    out: dict[str, Value] = {}
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GgufError("not a GGUF file (bad magic)")
        (version,) = _read(f, "<I")
        if version < 2:
            raise GgufError(f"GGUF version {version} is not supported")
        _, kv_count = _read(f, "<QQ")
        if kv_count > 1 << 20:
            raise GgufError(f"implausible metadata count {kv_count}")
        for _ in range(int(kv_count)):
            key = _string(f)
            vtype = int(_read(f, "<I")[0])
            if vtype == _STRING:
                out[key] = _string(f)
            elif vtype == _ARRAY:
                etype, count = _read(f, "<IQ")
                if etype in _SCALARS:
                    f.seek(int(count) * struct.calcsize(_SCALARS[int(etype)]), 1)
                else:
                    for _ in range(int(count)):
                        _skip(f, int(etype))
                out[key] = int(count)
            elif vtype in _SCALARS:
                out[key] = _read(f, _SCALARS[vtype])[0]
            else:
                raise GgufError(f"unknown value type {vtype} for '{key}'")
    return out
