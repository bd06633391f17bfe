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


def test_reports_name_the_machines_the_runs_recorded(common):
    """A report assembled from saved runs names where they ran (not where the report is written), with the load
    averages they started under, and says how many runs recorded nothing."""
    a = dict(machine="Machine: x86_64 (CPU A with AVX2), 2 CPUs", load=0.5)
    b = dict(machine="Machine: x86_64 (CPU A with AVX2), 2 CPUs", load=1.25)
    c = dict(machine="Machine: x86_64 (CPU B with AVX-512), 2 CPUs", load_at_start=0.75)
    assert common.runs_machine_line([a]) == ("Machine: x86_64 (CPU A with AVX2), 2 CPUs; load average 0.50 at the "
                                             "start of the run")
    assert common.runs_machine_line([a, b, {}]) == ("Machine: x86_64 (CPU A with AVX2), 2 CPUs; load average "
                                                    "0.50–1.25 at the start of each run (1 of 3 runs did not record "
                                                    "theirs)")
    assert common.runs_machine_line([a, c]) == ("Machines: x86_64 (CPU A with AVX2), 2 CPUs; x86_64 (CPU B with "
                                                "AVX-512), 2 CPUs; load average 0.50–0.75 at the start of each run")
    assert common.runs_machine_line([{}, {}]) == "Machine: not recorded with these runs"
    record = common.run_record()
    assert record["machine"] == common.machine_line() and record["load"] >= 0
