"""Checkpoint diff: do two checkpoints, in any formats ``load_model`` reads, hold the same model?

Copies of LLaMA circulate converted (Meta shards, HF safetensors, GGUF, quantized), so checksums
rarely settle "is this the real thing?". :func:`diff_checkpoints` maps both sides to one naming,
Hugging Face's ``LlamaForCausalLM`` names and rotate-half q/k layout (Meta shards merged and
renamed by :mod:`~workbench.models.meta_shards` and :mod:`~workbench.models.meta`; GGUF names
through the ``gguf`` package's own table, q/k rows un-permuted by
:func:`~workbench.models.meta.permute_rotary` since llama.cpp's layout is Meta's, quantized
tensors dequantized by ``gguf.quants``) and compares tensor by tensor, streaming: chunks of rows
read straight from the file (``safe_open`` slices, a memory map of one GGUF tensor's bytes,
``torch.load(mmap=True, weights_only=True)``), so memory stays far below one model. Only a Meta
tensor split over shards and a GGUF q/k matrix are held whole, one at a time. Nothing in a
checkpoint is executed. Derived buffers (``rope.freqs``, ``rope_freqs.weight``, ``inv_freq``)
are skipped. The verdicts are :data:`VERDICTS`; the tokenizers are compared too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np
import pandas as pd
import torch

from workbench.common.errors import CheckpointError
from workbench.models import gguf_format, hf_format, meta, meta_shards
from workbench.models.meta_params import read_params
from workbench.models.safe_load import load_torch_file
from workbench.models.verify import structure_problem

CHUNK_ELEMENTS = 1 << 20  # elements compared at once: float64 temporaries of a few MB
_SKIPPED = ("rope_freqs.weight", "rotary_emb.inv_freq")  # derived buffers, not weights
# GGUF float types: how to view the raw bytes, and the values' dtype (BF16: int16 bits viewed as bf16).
_FLOATS = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
           "F64": (np.float64, torch.float64), "BF16": (np.int16, torch.bfloat16)}  # fmt: skip
# GGUF types with a known error bound: (block size, levels, symmetric). A block's step is max|x| /
# (levels/2) or (max - min) / (levels - 1); one step per element is allowed (twice the rounding
# error: covers fp16 scales and K-quants' quantized sub-block scales, bounded by the super-block's).
_QUANT_STEPS = {
    "Q4_0": (32, 16, True), "Q4_1": (32, 16, False), "Q5_0": (32, 32, True),
    "Q5_1": (32, 32, False), "Q8_0": (32, 256, True), "Q2_K": (256, 4, False),
    "Q3_K": (256, 8, True), "Q4_K": (256, 16, False), "Q5_K": (256, 32, False),
    "Q6_K": (256, 64, True),
}  # fmt: skip
VERDICTS = ("identical", "equal_within_quantization", "equal_within_tolerance", "different",
            "missing_in_a", "missing_in_b", "shape_mismatch")  # fmt: skip
_SAME = VERDICTS[:3]

Reader = Callable[[int, int], torch.Tensor]  # rows [start, stop) of the canonical tensor


@dataclass
class _Entry:
    """One tensor of a checkpoint under its canonical name, read on demand."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype  # of the values read (float32 for a dequantized GGUF tensor)
    qtype: str | None  # the GGUF quantization type it is stored in, if any
    open: Callable[[], AbstractContextManager[Reader]]

    @property
    def label(self) -> str:
        return self.qtype or str(self.dtype).removeprefix("torch.")


# A checkpoint opened for diffing, and its vocabulary (tokens by id, special ids, BPE merges).
_Checkpoint = NamedTuple("_Checkpoint", [("path", Path), ("format", str), ("tensors", dict), ("vocab", Any),
                                         ("files", list)])  # fmt: skip
_Vocab = NamedTuple("_Vocab", [("file", str), ("tokens", list), ("specials", dict), ("merges", list | None)])


@dataclass
class TensorDiff:
    """The verdict on one tensor (see :data:`VERDICTS`); errors are None when not computed."""

    name: str
    verdict: str
    shape_a: tuple[int, ...] | None
    shape_b: tuple[int, ...] | None
    dtype_a: str | None
    dtype_b: str | None
    max_abs: float | None = None
    max_rel: float | None = None
    changed: float | None = None  # share of elements whose value differs
    where: tuple[int, ...] | None = None  # index of the largest absolute error
    detail: str = ""


@dataclass
class TokenizerDiff:
    """The two tokenizers compared: vocabulary by id, special token ids, BPE merges."""

    vocab_a: int
    vocab_b: int
    differing: int  # ids whose token differs (or exists on one side only)
    examples: list[tuple[int, str | None, str | None]]
    specials: dict[str, tuple[int | None, int | None]]
    merges_a: int | None
    merges_b: int | None
    merges_same: bool | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.problems

    @property
    def summary(self) -> str:
        merges = "" if self.merges_same is None else ", same merges"
        return f"same ({self.vocab_a} tokens{merges})" if self.same else "different: " + "; ".join(self.problems)


@dataclass
class CheckpointDiff:
    """The result of :func:`diff_checkpoints`: per-tensor verdicts, the tokenizers, a verdict."""

    a: str
    b: str
    format_a: str
    format_b: str
    tensors: list[TensorDiff]
    tokenizer: TokenizerDiff
    bytes_read: int  # weight-file bytes of both checkpoints

    @property
    def frame(self) -> pd.DataFrame:
        """One row per tensor: name, verdict, shapes, dtypes, errors, where, detail."""
        columns = list(TensorDiff.__dataclass_fields__)
        return pd.DataFrame([asdict(t) for t in self.tensors], columns=columns)

    @property
    def different(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.verdict not in _SAME]

    @property
    def same(self) -> bool:
        """Every tensor equal (bitwise, within quantization or tolerance) and the same tokenizer."""
        return not self.different and self.tokenizer.same

    @property
    def verdict(self) -> str:
        """One line: ``same weights``, ``same within Q8_0 quantization``, ``different: ...``."""
        bad = self.different
        if bad or not self.tokenizer.same:
            parts = []
            if bad:
                names = ", ".join(t.name for t in bad[:3]) + (", ..." if len(bad) > 3 else "")
                parts.append(f"{len(bad)} tensor{'s' * (len(bad) != 1)} ({names})")
            if not self.tokenizer.same:
                parts.append(f"tokenizer ({'; '.join(self.tokenizer.problems)})")
            return "different: " + "; ".join(parts)
        quant = sorted({t.detail.split(":")[0] for t in self.tensors if t.verdict == _SAME[1]})
        tol = sorted({t.detail.split(":")[0] for t in self.tensors if t.verdict == _SAME[2]})
        within = [f"{' + '.join(quant)} quantization"] if quant else []
        within += [f"tolerance ({', '.join(tol)})"] if tol else []
        return "same within " + " and ".join(within) if within else "same weights"

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (``workbench diff --json``)."""
        return {"a": self.a, "b": self.b, "format_a": self.format_a, "format_b": self.format_b,
                "verdict": self.verdict, "same": self.same, "bytes_read": self.bytes_read,
                "tokenizer": {**asdict(self.tokenizer), "same": self.tokenizer.same},
                "tensors": json.loads(self.frame.to_json(orient="records"))}  # fmt: skip


def diff_checkpoints(a: Any, b: Any, *, atol: float | None = None, progress: bool = True) -> CheckpointDiff:
    """Compare two checkpoints tensor by tensor, whatever their formats.

    Args:
        a: a source ``load_model`` reads: a Meta folder (``params.json`` + shards), a Hugging
            Face folder (safetensors or ``.bin``), a ``.gguf`` file, or None (the embedded model).
        b: the other one.
        atol: also call tensors whose largest absolute difference is at most this equal
            (``equal_within_tolerance``); by default only exact, quantization and float-dtype
            differences are explained away.
        progress: show a progress bar over tensors.

    Returns:
        A :class:`CheckpointDiff` (``.frame``, ``.verdict``, ``.same``, ``.tokenizer``).

    Raises:
        CheckpointError: a path does not exist, or a file is unreadable, truncated or corrupt;
            the message names the file.

    >>> d = diff_checkpoints("llama/7B", "llama-7b-hf")  # doctest: +SKIP
    >>> d.verdict  # doctest: +SKIP
    'same weights'
    """
    from tqdm.auto import tqdm

    left, right = _open_checkpoint(a), _open_checkpoint(b)
    names = sorted(set(left.tensors) | set(right.tensors), key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])
    rows = []
    for name in tqdm(names, desc="diff", unit="tensor", disable=not progress):
        ea, eb = left.tensors.get(name), right.tensors.get(name)
        if ea is None or eb is None:
            verdict = "missing_in_a" if ea is None else "missing_in_b"
            rows.append(TensorDiff(name, verdict, ea and ea.shape, eb and eb.shape, ea and ea.label, eb and eb.label))
        else:
            rows.append(_compare(name, ea, eb, atol))
    size = sum(f.stat().st_size for f in [*left.files, *right.files])
    return CheckpointDiff(str(left.path), str(right.path), left.format, right.format, rows,
                          _compare_vocabs(left.vocab, right.vocab), size)  # fmt: skip


def _open_checkpoint(source: Any) -> _Checkpoint:
    from workbench.models.embedded import embedded_gguf_path
    from workbench.models.formats import detect_format

    fmt, location = detect_format(source)
    if fmt == "embedded":
        fmt, location = "gguf", embedded_gguf_path()
    if fmt == "hub":
        raise CheckpointError(f"{source}: no such file or folder (hub ids are not diffed; download it first)")
    path = Path(location)
    return {"meta": _meta_checkpoint, "hf": _hf_checkpoint, "gguf": _gguf_checkpoint}[fmt](path)


@contextmanager
def _rows_of(load: Callable[[], torch.Tensor], shape: tuple[int, ...]) -> Iterator[Reader]:
    """A reader over a tensor materialised once (a merged Meta tensor, a permuted GGUF q/k)."""
    whole = load().reshape(shape[0] if len(shape) > 1 else 1, -1)
    yield lambda start, stop: whole[start:stop]


@contextmanager
def _safetensors_rows(file: Path, name: str, ndim: int) -> Iterator[Reader]:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:  # closed (unmapped) after this tensor
        piece = f.get_slice(name)
        yield (lambda start, stop: piece[start:stop]) if ndim > 1 else (lambda start, stop: piece[:])


def _hf_checkpoint(folder: Path) -> _Checkpoint:
    from safetensors import safe_open

    config = hf_format.read_llama_config(folder)
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: config.json but no *.safetensors or *.bin weights")
    tensors: dict[str, _Entry] = {}
    for file in files:
        if problem := structure_problem(file):
            raise CheckpointError(f"{file}: {problem}")
        if file.suffix == ".bin":
            for name, t in load_torch_file(file).items():
                tensors[name] = _Entry(file, tuple(t.shape), t.dtype, None, partial(_rows_of, lambda t=t: t, t.shape))
            continue
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    shape = tuple(piece.get_shape())
                    tensors[name] = _Entry(file, shape, piece[:0].dtype, None,
                                           partial(_safetensors_rows, file, name, len(shape)))  # fmt: skip
        except Exception as err:  # safetensors raises its own error types for a bad file
            raise CheckpointError(f"{file}: cannot read safetensors file: {err}") from None
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_SKIPPED)}
    if config.tie_word_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    vocab = _vocab_of(hf_format.load_hf_tokenizer(folder), folder)
    return _Checkpoint(folder, "hf", tensors, vocab, files)


def _meta_checkpoint(folder: Path) -> _Checkpoint:
    params = read_params(folder)
    paths = meta_shards.find_shards(folder)
    shards, names = meta_shards.open_shards(paths, params)
    tensors: dict[str, _Entry] = {}
    for name in names:
        pieces = [shard[name] for shard in shards]
        try:
            dim = meta_shards.concat_dim(name, pieces[0].shape, params, len(paths))
        except KeyError:
            raise CheckpointError(f"{paths[0]}: unexpected tensor {name!r} for a LLaMA checkpoint") from None
        shape = list(pieces[0].shape)
        if dim is not None and dim < len(shape):
            shape[dim] *= len(paths)

        def load(name=name, pieces=pieces) -> torch.Tensor:
            return meta.to_hf_tensor(name, meta_shards.merge_tensor(name, pieces, paths, params), params)

        where = paths[0] if len(paths) == 1 else folder / "consolidated.*.pth"
        tensors[meta.hf_name(name)] = _Entry(where, tuple(shape), pieces[0].dtype, None,
                                             partial(_rows_of, load, tuple(shape)))  # fmt: skip
    tokenizer_file = meta.find_tokenizer(folder)
    tokenizer, _ = meta.load_meta_tokenizer(tokenizer_file, params)
    return _Checkpoint(folder, "meta", tensors, _vocab_of(tokenizer, tokenizer_file), paths)


@contextmanager
def _gguf_rows(path: Path, offset: int, n_bytes: int, n_rows: int, qtype: gguf.GGMLQuantizationType,
               permute: tuple[int, int] | None) -> Iterator[Reader]:  # fmt: skip
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(n_bytes,))
    rows = raw.reshape(n_rows, -1)  # ggml blocks never straddle rows

    def read(start: int, stop: int) -> torch.Tensor:
        block = np.asarray(rows[start:stop])
        if qtype.name in _FLOATS:
            return torch.from_numpy(block.view(_FLOATS[qtype.name][0]).copy()).view(_FLOATS[qtype.name][1])
        return torch.from_numpy(gguf.quants.dequantize(block, qtype))

    if permute is None:
        yield read  # the map (this tensor's bytes only) goes when the reader does
    else:  # llama.cpp's q/k rows are in Meta's interleaved order
        whole = meta.permute_rotary(read(0, n_rows), permute[0], n_rows, permute[1])
        yield lambda start, stop: whole[start:stop]


def _gguf_checkpoint(path: Path) -> _Checkpoint:
    reader, info = gguf_format.read_gguf(path)
    if info["architecture"] != gguf_format.SUPPORTED_ARCHITECTURE or not isinstance(info["block_count"], int):
        raise CheckpointError(f"{path}: not a LLaMA GGUF (architecture {info['architecture']!r})")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, info["block_count"])
    canonical = {name_map.get_name(n, try_suffixes=(".weight",)): n for n in meta.hf_tensor_names(info["block_count"])}
    tensors: dict[str, _Entry] = {}
    for t in reader.tensors:
        if t.name in _SKIPPED:
            continue
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        heads = {"attn_q": info["head_count"], "attn_k": info["head_count_kv"]}.get(t.name.split(".")[-2])
        kind = t.tensor_type.name
        opener = partial(_gguf_rows, path, int(t.data_offset), int(t.n_bytes), shape[0] if len(shape) > 1 else 1,
                         t.tensor_type, (heads, shape[1]) if heads else None)  # fmt: skip
        dtype = _FLOATS[kind][1] if kind in _FLOATS else torch.float32
        tensors[canonical.get(t.name, t.name)] = _Entry(path, shape, dtype, None if kind in _FLOATS else kind, opener)
    if "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # llama.cpp ties by omission

    def field_(key: str) -> Any:
        found = reader.get_field(key)
        return None if found is None else found.contents()

    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
    specials = {k: field_(f"tokenizer.ggml.{v}") for k, v in keys.items()}
    vocab = _Vocab(str(path), list(field_("tokenizer.ggml.tokens") or []), specials, field_("tokenizer.ggml.merges"))
    return _Checkpoint(path, "gguf", tensors, vocab, [path])


def _vocab_of(tokenizer: Any, file: Path) -> _Vocab:
    """Tokens by id, special ids and (for a fast BPE tokenizer) merges of an HF-API tokenizer."""
    by_token = tokenizer.get_vocab()
    tokens: list[str | None] = [None] * (max(by_token.values(), default=-1) + 1)
    for token, i in by_token.items():
        tokens[i] = token
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad", "unk")}
    merges = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        if model.get("type") == "BPE":
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return _Vocab(str(file), tokens, specials, merges)


def _compare_vocabs(a: _Vocab, b: _Vocab, *, examples: int = 5) -> TokenizerDiff:
    """Compare two vocabularies id by id, their special ids and their merges."""
    n = max(len(a.tokens), len(b.tokens))
    pad_a, pad_b = a.tokens + [None] * (n - len(a.tokens)), b.tokens + [None] * (n - len(b.tokens))
    diffs = [(i, x, y) for i, (x, y) in enumerate(zip(pad_a, pad_b, strict=True)) if x != y]
    problems, notes = [], []
    if len(a.tokens) != len(b.tokens):
        problems.append(f"vocab {len(a.tokens)} vs {len(b.tokens)}")
    if diffs:
        shown = ", ".join(f"id {i}: {x!r} vs {y!r}" for i, x, y in diffs[:3])
        problems.append(f"{len(diffs)} token{'s' * (len(diffs) != 1)} differ ({shown})")
    specials = {k: (a.specials.get(k), b.specials.get(k)) for k in ("bos", "eos", "pad", "unk")}
    for k, (x, y) in specials.items():
        if x is not None and y is not None and x != y:
            problems.append(f"{k} id {x} vs {y}")
        elif (x is None) != (y is None):
            notes.append(f"{k} id set on one side only ({x} vs {y})")
    merges_same = None if a.merges is None or b.merges is None else a.merges == b.merges
    if merges_same is False:
        first = next((i for i, (x, y) in enumerate(zip(a.merges, b.merges, strict=False)) if x != y),
                     min(len(a.merges), len(b.merges)))  # fmt: skip
        problems.append(f"merges differ ({len(a.merges)} vs {len(b.merges)}, first at rank {first})")
    elif merges_same is None and (a.merges or b.merges):
        notes.append("BPE merges on one side only (not compared)")
    return TokenizerDiff(len(a.tokens), len(b.tokens), len(diffs), diffs[:examples], specials,
                         None if a.merges is None else len(a.merges),
                         None if b.merges is None else len(b.merges), merges_same, problems, notes)  # fmt: skip


def _compare(name: str, a: _Entry, b: _Entry, atol: float | None) -> TensorDiff:
    row = TensorDiff(name, "different", a.shape, b.shape, a.label, b.label)
    if a.shape != b.shape:
        row.verdict, row.detail = "shape_mismatch", f"{a.shape} vs {b.shape}"
        return row
    n_rows = a.shape[0] if len(a.shape) > 1 else 1
    row_len = math.prod(a.shape) // max(n_rows, 1)
    step = max(1, CHUNK_ELEMENTS // max(row_len, 1))
    stats, side = _Stats(a, b), a  # side: whose file is being read, for the error message
    try:
        with a.open() as read_a:
            side = b
            with b.open() as read_b:
                for start in range(0, n_rows, step):
                    stop = min(n_rows, start + step)
                    side = a
                    chunk_a = read_a(start, stop).reshape(stop - start, row_len)
                    side = b
                    chunk_b = read_b(start, stop).reshape(stop - start, row_len)
                    side = None
                    stats.add(chunk_a, chunk_b, start * row_len)
    except Exception as err:
        if side is None or isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{side.file}: cannot read tensor {name!r} ({type(err).__name__}: {err})") from err
    return stats.verdict(row, atol)


class _Stats:
    """Running comparison of one tensor over its chunks of rows."""

    def __init__(self, a: _Entry, b: _Entry):
        self.bitwise = a.label == b.label
        self.numel, self.shape, self.changed = math.prod(a.shape), a.shape, 0
        self.max_abs, self.max_rel, self.where = 0.0, 0.0, 0
        self.quant = [(q, _QUANT_STEPS.get(q)) for q in (a.qtype, b.qtype) if q]
        self.known = all(steps for _, steps in self.quant)  # every quantized side's bound is known
        self.quant_ratio = 0.0  # largest error in units of the quantization step
        floats = a.dtype.is_floating_point and b.dtype.is_floating_point
        self.coarse = max((a.dtype, b.dtype), key=lambda d: torch.finfo(d).eps) if floats else None
        self.converted = floats and a.dtype != b.dtype and not self.quant
        self.conversion_ok = True

    def add(self, a: torch.Tensor, b: torch.Tensor, offset: int) -> None:
        if self.bitwise:
            self.bitwise = torch.equal(_bits(a), _bits(b))
            if self.bitwise:
                return
        x, y = a.double(), b.double()
        d = torch.where(x == y, 0.0, (x - y).abs())
        d = torch.where(x.isnan() & y.isnan(), 0.0, d).nan_to_num(nan=math.inf)
        self.changed += int((d > 0).sum())
        scale = torch.maximum(x.abs(), y.abs()).nan_to_num(nan=math.inf)
        top = float(d.max())
        if top > self.max_abs:
            self.max_abs, self.where = top, offset + int(d.argmax())
        rel = torch.where(d == 0, 0.0, d / scale).nan_to_num(nan=math.inf)
        self.max_rel = max(self.max_rel, float(rel.max()))
        if self.converted:
            info = torch.finfo(self.coarse)
            self.conversion_ok &= bool((d <= info.eps * scale + info.tiny).all())
        if self.quant and self.known:
            bound = sum(torch.maximum(_block_step(x, *s), _block_step(y, *s)).repeat_interleave(s[0])
                        for _, s in self.quant)  # fmt: skip
            flat = d.flatten()
            ratio = torch.where(flat == 0, 0.0, flat / bound).nan_to_num(nan=math.inf)
            self.quant_ratio = max(self.quant_ratio, float(ratio.max()))

    def verdict(self, row: TensorDiff, atol: float | None) -> TensorDiff:
        if self.bitwise:
            row.verdict, row.max_abs, row.max_rel, row.changed = "identical", 0.0, 0.0, 0.0
            return row
        row.max_abs, row.max_rel, row.changed = self.max_abs, self.max_rel, self.changed / self.numel
        if self.changed:
            row.where = tuple(int(i) for i in np.unravel_index(self.where, self.shape))
        kinds = " + ".join(q for q, _ in self.quant)
        if self.quant and self.known and self.quant_ratio <= 1.0:
            row.verdict = "equal_within_quantization"
            row.detail = f"{kinds}: max error {self.quant_ratio:.2f} of a {kinds} step"
        elif self.changed == 0 and not self.converted:
            row.verdict, row.detail = "equal_within_tolerance", "equal values: bit patterns differ (-0.0, NaN payloads)"
        elif self.converted and self.conversion_ok:
            row.verdict = "equal_within_tolerance"
            row.detail = f"{row.dtype_a} vs {row.dtype_b}: within {str(self.coarse)[6:]} rounding"
        elif atol is not None and self.max_abs <= atol:
            row.verdict, row.detail = "equal_within_tolerance", f"atol {atol:g}: max abs error {self.max_abs:.3g}"
        else:
            steps = f"; {self.quant_ratio:.1f}x the {kinds} step" if self.known else f"; no error bound known for {kinds}"
            row.detail = f"max abs error {self.max_abs:.3g} at {row.where}" + (steps if self.quant else "")
        return row


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so that NaN == NaN and -0.0 != 0.0)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    return t.contiguous().view(ints[t.element_size()]) if t.dtype.is_floating_point else t


def _block_step(x: torch.Tensor, block: int, levels: int, symmetric: bool) -> torch.Tensor:
    """One quantization step per block of ``block`` consecutive elements of each row."""
    blocks = x.reshape(-1, block)
    return blocks.abs().amax(1) / (levels // 2) if symmetric else (blocks.amax(1) - blocks.amin(1)) / (levels - 1)
