"""Benchmarks are not tests; this only proves they run and write their JSON at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def test_bench_data_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPTS / "bench_data.py"), "--cases", "2", "--size", "32",
                             "--slices", "8", "--repeats", "1", "--output", str(out)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    for key in ("phantom_cases_per_s", "load_window_volumes_per_s", "cached_slices_per_s_memory", "cached_slices_per_s_disk"):
        assert figures[key] > 0, key
    assert figures["machine"]["cpu_count"] >= 1
