"""benchmarks/common.py: the machine line of the results files names the CPU and its widest vector units."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    return common


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse2 avx avx2 fma", "AMD EPYC 7B13 with AVX2"),
    ("fpu avx2 avx512f avx512bw amx_bf16 amx_tile", "AMD EPYC 7B13 with AVX-512 and AMX"),
    ("fpu sse2", "AMD EPYC 7B13"),
])
def test_cpu_model_names_the_widest_vector_units(tmp_path, common, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert common.cpu_model(info) == expected
    assert common.cpu_model(tmp_path / "missing") == ""
    line = common.machine_line(0.25)
    assert line.startswith("Machine: ") and line.endswith("load average 0.25 at the start")
