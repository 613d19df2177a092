import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_smoke(tmp_path, data_dir):
    """The benchmark runs end to end on a tiny slice and writes its JSON schema."""
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead.py"),
            "--settings",
            "mlp",
            "--samples",
            "300",
            "--repeats",
            "1",
            "--data-dir",
            str(data_dir),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    speeds = data["mlp"]["samples_per_s"]
    assert set(speeds) == {"streamkd", "bare", "avalanche", "wrapped", "plugin"}
    assert all(v > 0 for v in speeds.values())
    ratios = data["mlp"]["ratios"]
    assert set(ratios) == {
        "streamkd_vs_bare",
        "streamkd_vs_avalanche",
        "wrapped_vs_avalanche",
        "plugin_vs_avalanche",
    }
    assert ratios["wrapped_vs_avalanche"] == speeds["wrapped"] / speeds["avalanche"]
    assert data["mlp"]["samples"] == 300
