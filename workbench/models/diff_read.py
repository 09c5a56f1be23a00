"""Reading checkpoint tensors in chunks of rows for :mod:`~workbench.models.diff`, with plain file reads.

A memory map keeps every page it has touched resident, and counted in the process's RSS, for as
long as it lives; bytes read with ``readinto`` into a buffer reused from chunk to chunk go
through the page cache, which is not the process's. So both safetensors and GGUF tensors are
read here from their byte offsets, and memory stays at a few chunks whatever the model's size.
The GGUF header is parsed here too, with ``struct``: ``gguf.GGUFReader`` builds numpy views
of every string of the vocabulary (seconds for 49k tokens and merges), and a diff needs a few
keys and the tensor table. Quantized rows are dequantized by ``gguf.quants``, or for the
commonest types (Q4_0, Q4_1, Q8_0) by :func:`dequantize`'s one vectorised pass per chunk (the
same float32 operations, so the same bits; gguf loops over groups of 16 rows, 3x slower);
llama.cpp's q/k rows (Meta's interleaved rotary order) are reordered head by head, as raw bytes,
before that.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
import torch

from workbench.common.errors import CheckpointError
from workbench.models.gguf_format import checked_gguf_size, truncated_gguf
from workbench.models.meta import permute_rotary

# safetensors dtype names, and GGUF's unquantized types, as torch dtypes.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "U16": "uint16",
              "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}  # fmt: skip
GGUF_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}  # fmt: skip
# GGUF metadata value types (gguf.GGUFValueType) as struct codes; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Scratch:
    """A byte buffer reused from chunk to chunk and tensor to tensor (one per side of a diff)."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)

    def take(self, n: int) -> np.ndarray:
        if self.buffer.size < n:
            self.buffer = np.empty(n, np.uint8)
        return self.buffer[:n]


class Rows:
    """Rows ``[start, stop)`` of one tensor in its canonical layout: ``raw`` bytes and ``values``.

    Both return ``(rows, -1)`` tensors valid until the next call, which the caller may overwrite.
    """

    def raw(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def values(self, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError


class WholeRows(Rows):
    """A tensor held whole (a merged Meta tensor, a ``.bin`` state dict's tensor)."""

    def __init__(self, tensor: torch.Tensor):
        self.whole = tensor.reshape(tensor.shape[0] if tensor.dim() > 1 else 1, -1)

    def raw(self, start: int, stop: int) -> torch.Tensor:
        return self.whole[start:stop].contiguous().view(torch.uint8)

    def values(self, start: int, stop: int) -> torch.Tensor:
        return self.whole[start:stop].clone()


class FileRows(Rows):
    """A tensor stored row after row from byte ``offset`` of an open file.

    ``heads`` (llama.cpp's q/k) reorders each head's rows from Meta's interleaved rotary order to
    rotate-half; ``qtype`` (a GGUF quantization type) dequantizes, else bytes are viewed as ``dtype``.
    """

    def __init__(self, f: Any, scratch: Scratch, offset: int, n_rows: int, row_bytes: int, *,
                 dtype: torch.dtype | None = None, qtype: gguf.GGMLQuantizationType | None = None,
                 heads: int | None = None):  # fmt: skip
        self.f, self.scratch, self.offset, self.n_rows, self.row_bytes = f, scratch, offset, n_rows, row_bytes
        self.dtype, self.qtype, self.heads = dtype, qtype, heads
        self.cached: tuple[int, int] | None = None  # the rows `raw` last returned, still unchanged
        self.last: torch.Tensor | None = None

    def raw(self, start: int, stop: int) -> torch.Tensor:
        if self.heads is None:
            out = torch.from_numpy(self._read(start, stop))
        else:  # whole heads, reordered, then the rows asked for
            size = self.n_rows // self.heads
            first, last = start // size * size, -(-stop // size) * size
            block = torch.from_numpy(self._read(first, last))
            out = permute_rotary(block, (last - first) // size, last - first, self.row_bytes)[start - first : stop - first]
        self.cached, self.last = (start, stop), out
        return out

    def values(self, start: int, stop: int) -> torch.Tensor:
        raw = self.last if self.cached == (start, stop) else self.raw(start, stop)
        self.cached = None  # the caller may overwrite what is returned (for plain dtypes, the buffer)
        if self.qtype is not None:
            return torch.from_numpy(dequantize(raw.numpy(), self.qtype))
        return raw.view(self.dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:
        n = (stop - start) * self.row_bytes
        buffer = self.scratch.take(n)
        self.f.seek(self.offset + start * self.row_bytes)
        view, got = memoryview(buffer), 0
        while got < n:
            k = self.f.readinto(view[got:])
            if not k:
                raise EOFError(f"file ends at byte {self.offset + start * self.row_bytes + got:,}, "
                               f"tensor data runs to {self.offset + stop * self.row_bytes:,}")  # fmt: skip
            got += k
        return buffer.reshape(stop - start, self.row_bytes)


def dequantize(rows: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """``gguf.quants.dequantize`` of ``(rows, bytes)`` blocks into ``(rows, values)`` float32, bit for bit."""
    fast = _DEQUANTIZE.get(qtype.name)
    if fast is None:
        return gguf.quants.dequantize(rows, qtype)
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return fast(rows.reshape(-1, type_size)).reshape(rows.shape[0], -1)


def _nibbles(qs: np.ndarray) -> np.ndarray:  # 16 bytes a block: low nibbles are values 0-15, high 16-31
    out = np.empty((len(qs), 32), np.float32)
    np.bitwise_and(qs, 0xF, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")
    return out


def _half(blocks: np.ndarray, at: int) -> np.ndarray:  # a block's float16 scale, as a (blocks, 1) column
    return blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32)


def _q4_0(b: np.ndarray) -> np.ndarray:  # d, 16 bytes of nibbles q: (q - 8) * d
    out = _nibbles(b[:, 2:])
    out -= 8
    out *= _half(b, 0)
    return out


def _q4_1(b: np.ndarray) -> np.ndarray:  # d, m, 16 bytes of nibbles q: q * d + m
    out = _nibbles(b[:, 4:])
    out *= _half(b, 0)
    out += _half(b, 2)
    return out


def _q8_0(b: np.ndarray) -> np.ndarray:  # d, 32 int8 q: q * d
    out = b[:, 2:].view(np.int8).astype(np.float32)
    out *= _half(b, 0)
    return out


_DEQUANTIZE = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q8_0": _q8_0}


@contextmanager
def file_rows(file: Path, scratch: Scratch, offset: int, n_rows: int, row_bytes: int, **kind: Any) -> Iterator[Rows]:
    """:class:`FileRows` over ``file``, closed afterwards."""
    with open(file, "rb", buffering=0) as f:
        yield FileRows(f, scratch, offset, n_rows, row_bytes, **kind)


def rows_and_width(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor as rows: ``(shape[0], the rest)``; a vector or scalar is one row.

    >>> rows_and_width((32, 8, 4)), rows_and_width((576,)), rows_and_width(())
    ((32, 32), (1, 576), (1, 1))
    """
    n_rows = shape[0] if len(shape) > 1 else 1
    return n_rows, math.prod(shape) // max(n_rows, 1)


class StTensor(NamedTuple):
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of the data, from the start of the file
    n_bytes: int


def safetensors_index(file: Path) -> dict[str, StTensor]:
    """The tensors of a safetensors file (its JSON header), checked against their dtype and shape."""
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        out = {}
        for name, t in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, (begin, end) = getattr(torch, _ST_DTYPES[t["dtype"]]), tuple(t["shape"]), t["data_offsets"]
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise ValueError(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {t['dtype']}")
            out[name] = StTensor(dtype, shape, 8 + size + begin, end - begin)
        return out
    except Exception as err:  # a bad header: JSON, a key, a type
        raise CheckpointError(f"{file}: cannot read safetensors file: {type(err).__name__}: {err}") from None


class GgufTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]  # PyTorch order (GGUF lists dimensions innermost first)
    qtype: gguf.GGMLQuantizationType
    offset: int  # of the data, from the start of the file
    n_bytes: int


def read_gguf_header(path: Path) -> tuple[dict[str, Any], list[GgufTensor]]:
    """A little-endian GGUF (version 2 or 3) file's metadata and tensor table; reads no tensor data.

    Numeric arrays come back as numpy arrays, strings and arrays of strings as ``str`` / lists.

    Raises:
        CheckpointError: not a GGUF file, a corrupt or truncated header, or tensor data past the end.
    """
    size = checked_gguf_size(path)
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:  # unmapped on return: no pages kept
                fields, tensors = _parse_gguf(m)
        except CheckpointError:
            raise
        except Exception as err:  # struct.error, an unknown type, bad UTF-8
            raise CheckpointError(
                f"{path}: GGUF header is truncated or corrupt ({size:,} bytes): {type(err).__name__}: {err}"
            ) from None
    for t in tensors:
        if t.offset + t.n_bytes > size:
            raise truncated_gguf(path, t.name, t.offset + t.n_bytes, size)
    return fields, tensors


def _parse_gguf(m: mmap.mmap) -> tuple[dict[str, Any], list[GgufTensor]]:
    pos = 4

    def take(code: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + code, m, pos)
        pos += struct.calcsize(code)
        return value

    def string() -> str:
        nonlocal pos
        n = take("Q")
        if pos + n > len(m):
            raise ValueError(f"a string of {n:,} bytes at byte {pos:,} runs past the end")
        pos += n
        return m[pos - n : pos].decode("utf-8", "replace")

    def value(kind: int) -> Any:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("I"), take("Q")
            if inner in (8, 9):
                return [value(inner) for _ in range(n)]
            dtype = np.dtype("<" + _GGUF_SCALARS[inner])
            pos += n * dtype.itemsize
            return np.frombuffer(m, dtype, n, pos - n * dtype.itemsize).copy()
        return take(_GGUF_SCALARS[kind])

    version = take("I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (only little-endian versions 2 and 3 are read)")
    n_tensors, n_fields = take("Q"), take("Q")
    fields = {}
    for _ in range(n_fields):
        key = string()
        fields[key] = value(take("I"))
    table = []
    for _ in range(n_tensors):
        name, n_dims = string(), take("I")
        dims = [take("Q") for _ in range(n_dims)]
        table.append((name, tuple(reversed(dims)), gguf.GGMLQuantizationType(take("I")), take("Q")))
    alignment = int(fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    start = -(-pos // alignment) * alignment
    tensors = []
    for name, shape, qtype, offset in table:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        tensors.append(GgufTensor(name, shape, qtype, start + offset, math.prod(shape) // block * type_size))
    return fields, tensors
