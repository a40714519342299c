"""benchmarks/bench_model.py as users run it: a subprocess at a small batch (without the official code, which is
never part of this repository), its tables parsed; and the per-round ratio helpers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from bench_model import memory_allocator, ratio, ratio_range  # noqa: E402


def run_bench(*arguments) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "bench_model.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def table_rows(stdout: str, title: str) -> dict[str, list[str]]:
    """model name -> the row's remaining columns, of the table under `title`."""
    lines = stdout.split(f"\n{title}")[1].split("\n\n")[0].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows = {}
    for line in lines[header + 1 :]:
        name, rest = re.match(r"(.+?fp32|.+?bf16)\s+(.*)", line).groups()
        rows[name.strip()] = rest.split()
    return rows


def test_ratios_are_per_round():
    # round 2 ran twice as fast for both models: the ratio stays 2, which a ratio of medians would not show
    official, ours = [2.0, 1.0, 2.2], [1.0, 0.5, 1.0]
    assert ratio(official, ours) == pytest.approx(2.0)
    assert ratio_range(official, ours) == "2.00-2.20"


def test_the_allocator_is_read_from_the_loaded_libraries():
    glibc_only = (
        "7f00-7f10 r-xp 00000000 08:01 131 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f20-7f30 rw-p 00000000 00:00 0 \n"
    )
    assert memory_allocator(glibc_only) == "the C library's malloc"
    preloaded = (
        glibc_only + "7f40-7f50 r-xp 00000000 08:01 977 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    )
    assert memory_allocator(preloaded) == "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10"
    # a folder named after an allocator is not the allocator
    assert (
        memory_allocator(glibc_only + "7f60-7f70 r--p 00000000 08:01 5 /opt/jemalloc-notes/libfoo.so\n")
        == "the C library's malloc"
    )


def test_bench_model_prints_both_tables():
    result = run_bench(
        "--batch-size", "2", "--queue-length", "64", "--rounds", "1", "--loops", "1", "--precisions", "fp32,bf16",
        "--threads", "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "memory allocator: " in result.stdout, result.stdout
    peak = re.search(r"GEMM peak \(timed in the same rounds\): fp32 (\d+) GFLOP/s \((\d+)\^3\)", result.stdout)
    assert peak and int(peak.group(1)) > 0, result.stdout
    for title in ("training step", "inference forward"):
        rows = table_rows(result.stdout, title)
        assert set(rows) == {"lddetr loops=1 fp32", "lddetr loops=1 bf16"}, result.stdout
        for name, (ms, vs_official, spread, vs_fp32, gflop, gflops, percent, floor_ms, ceiling) in rows.items():
            assert float(ms) > 0 and float(gflop) > 0, result.stdout
            assert float(gflops) == pytest.approx(float(gflop) / float(ms) * 1e3, rel=0.05)  # GFLOP is printed to 0.1
            # the floor is the FLOPs at the GEMM peak: ms / floor is the share of the peak the row reached
            assert float(floor_ms) / float(ms) == pytest.approx(float(percent.rstrip("%")) / 100, abs=0.01)
            assert vs_official == spread == ceiling == "-"  # no official code given
            assert (vs_fp32 == "-") == name.endswith("fp32")
    assert re.search(r"bf16 vs fp32 losses, loops=1 .*total \d+\.\d+ vs \d+\.\d+", result.stdout), result.stdout


def test_bench_model_rejects_a_batch_its_labels_do_not_fit():
    result = run_bench("--clips", "20")
    assert result.returncode == 2
    assert "--clips must be at least 56" in result.stderr.strip().splitlines()[-1]
