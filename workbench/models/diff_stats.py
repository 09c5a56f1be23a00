"""The running comparison behind :func:`~workbench.models.diff.diff_checkpoints`: one tensor, chunk by chunk.

Errors are computed in float32 whenever both sides fit in it (float32, float16, bfloat16,
dequantized GGUF), in float64 otherwise, on chunks of rows that stay in the CPU's caches. Two
figures are made exact where float32 could change them: the largest absolute error is
recomputed in float64 on the few elements whose float32 error ties the largest (rounding is
monotonic, so the true largest is among them), and a chunk holding NaN or infinity (or a
difference that overflows float32) is compared entirely in float64 with the full rules for
special values. The count of changed elements is exact too (a float32 difference of two
float32 values is zero only when they are equal). The relative error and the quantization ratio
are reported to float32's precision. A unit test checks all of them against one float64
computation over the whole tensor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from workbench.models.diff import TensorDiff

# GGUF types with a known error bound: (block size, levels, symmetric). A block's step is max|x| /
# (levels/2) or (max - min) / (levels - 1); one step per element is allowed (twice the rounding
# error: covers fp16 scales and K-quants' quantized sub-block scales, bounded by the super-block's).
QUANT_STEPS = {
    "Q4_0": (32, 16, True), "Q4_1": (32, 16, False), "Q5_0": (32, 32, True),
    "Q5_1": (32, 32, False), "Q8_0": (32, 256, True), "Q2_K": (256, 4, False),
    "Q3_K": (256, 8, True), "Q4_K": (256, 16, False), "Q5_K": (256, 32, False),
    "Q6_K": (256, 64, True),
}  # fmt: skip
_SUBNORMAL = float(np.finfo(np.float32).smallest_subnormal)  # a floor for scales: 0/0 -> 0, nothing else moves


class TensorStats:
    """Running comparison of one tensor (``shape``) over its chunks of rows.

    Args:
        dtypes: the values' dtypes on the two sides.
        qtypes: the GGUF quantization types they are stored in (None for plain tensors).
        shape: the tensor's shape (to turn the flat index of the largest error into an index).
        bitwise: whether both are stored alike, so that equal bits mean "identical".
    """

    def __init__(self, dtypes: tuple[torch.dtype, torch.dtype], qtypes: tuple[str | None, str | None],
                 shape: tuple[int, ...], bitwise: bool):  # fmt: skip
        self.bitwise, self.shape, self.numel, self.changed = bitwise, shape, math.prod(shape), 0
        self.max_abs, self.max_rel, self.where, self.top = 0.0, 0.0, 0, 0.0  # top: largest error in `work`
        self.quant = [(q, QUANT_STEPS.get(q)) for q in qtypes if q]
        self.known = all(steps for _, steps in self.quant)  # every quantized side's bound is known
        self.quant_ratio = 0.0  # largest error in units of the quantization step
        floats = all(d.is_floating_point for d in dtypes)
        self.coarse = max(dtypes, key=lambda d: torch.finfo(d).eps) if floats else None
        self.converted = floats and dtypes[0] != dtypes[1] and not self.quant
        self.conversion_ok = True
        small = floats and all(torch.finfo(d).bits <= 32 for d in dtypes)
        self.work = torch.float32 if small else torch.float64  # float32 holds every value exactly

    def add(self, a: torch.Tensor, b: torch.Tensor, offset: int) -> None:
        """Fold in one chunk: the same elements of both sides; ``offset`` is the chunk's first flat index.

        ``a`` and ``b`` may be overwritten (they are the readers' buffers, done with).
        """
        x, y = a.reshape(-1).to(self.work), b.reshape(-1).to(self.work)
        d = torch.sub(x, y).abs_()  # exactly 0 where x == y (IEEE subtraction, subnormals kept)
        top = float(d.max()) if d.numel() else 0.0
        if not math.isfinite(top):  # NaN, infinity or overflow in this chunk: the float64 rules
            return self._add_exact(x.double(), y.double(), offset)
        # d >= 0, so its signs are 0 or 1: their sum counts the nonzeros (exact in float32 below 2^24
        # elements), several times faster than torch.count_nonzero
        changed = int(d.sign().sum(dtype=torch.float32 if d.numel() < 1 << 24 else torch.float64))
        if not changed:
            return
        self.changed += changed
        if top >= self.top:  # the exact largest error is among the elements that tie in float32
            self.top = top
            candidates = torch.nonzero(d == top).flatten()
            exact = (x[candidates].double() - y[candidates].double()).abs()
            if float(exact.max()) > self.max_abs:
                self.max_abs, self.where = float(exact.max()), offset + int(candidates[exact.argmax()])
        if self.quant and self.known:
            self._add_quant(x, y, d)
        scale = torch.maximum(x.abs_(), y.abs_(), out=x)
        if self.converted:
            info = torch.finfo(self.coarse)
            self.conversion_ok &= bool((d <= scale * info.eps + info.tiny).all())
        rel = torch.div(d, scale.clamp_(min=_SUBNORMAL), out=d)
        self.max_rel = max(self.max_rel, float(rel.max()))

    def _add_quant(self, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> None:
        blocks = {s[0] for _, s in self.quant}
        if len(blocks) == 1:  # the bound is constant within a block: compare each block's largest error
            size = blocks.pop()
            bound = sum(torch.maximum(_block_step(x, *s), _block_step(y, *s)) for _, s in self.quant)
            err = d.reshape(-1, size).amax(1)
        else:  # sides with different block sizes: element by element
            bound = sum(torch.maximum(_block_step(x, *s), _block_step(y, *s)).repeat_interleave(s[0])
                        for _, s in self.quant)  # fmt: skip
            err = d
        ratio = torch.where(err == 0, 0.0, err / bound).nan_to_num(nan=math.inf)
        self.quant_ratio = max(self.quant_ratio, float(ratio.max()))

    def _add_exact(self, x: torch.Tensor, y: torch.Tensor, offset: int) -> None:
        """One chunk in float64, NaN == NaN and infinities included (their error is infinite)."""
        d = torch.where(x == y, 0.0, (x - y).abs())
        d = torch.where(x.isnan() & y.isnan(), 0.0, d).nan_to_num(nan=math.inf)
        self.changed += int((d > 0).sum())
        scale = torch.maximum(x.abs(), y.abs()).nan_to_num(nan=math.inf)
        top = float(d.max())
        if top > self.max_abs:
            self.max_abs, self.where = top, offset + int(d.argmax())
        self.top = max(self.top, float(torch.tensor(top, dtype=self.work)))  # as `add` would round it
        rel = torch.where(d == 0, 0.0, d / scale).nan_to_num(nan=math.inf)
        self.max_rel = max(self.max_rel, float(rel.max()))
        if self.converted:
            info = torch.finfo(self.coarse)
            self.conversion_ok &= bool((d <= info.eps * scale + info.tiny).all())
        if self.quant and self.known:
            bound = sum(torch.maximum(_block_step(x, *s), _block_step(y, *s)).repeat_interleave(s[0])
                        for _, s in self.quant)  # fmt: skip
            ratio = torch.where(d == 0, 0.0, d / bound).nan_to_num(nan=math.inf)
            self.quant_ratio = max(self.quant_ratio, float(ratio.max()))

    def verdict(self, row: TensorDiff, atol: float | None) -> TensorDiff:
        """Fill in ``row`` (a :class:`~workbench.models.diff.TensorDiff`): verdict, errors, detail."""
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


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so that NaN == NaN and -0.0 != 0.0)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    return t.contiguous().view(ints[t.element_size()]) if t.dtype.is_floating_point else t


def _block_step(x: torch.Tensor, block: int, levels: int, symmetric: bool) -> torch.Tensor:
    """One quantization step per block of ``block`` consecutive elements (rows hold whole blocks)."""
    blocks = x.reshape(-1, block)
    low, high = blocks.amin(1), blocks.amax(1)  # two passes beat one torch.aminmax over short rows
    return torch.maximum(low.abs_(), high.abs()) / (levels // 2) if symmetric else (high - low) / (levels - 1)
