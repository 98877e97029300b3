"""bench/benchmark.py, the speed benchmark, kept working: a tiny CPU run
of every method on both paths and of the basis timing, with the table and the JSON it writes."""
import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import benchmark  # noqa: E402


def test_tiny_cpu_benchmark_writes_its_table_and_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(["--device", "cpu", "--train-size", "64", "--test-size", "32", "--repeats", "1",
                    "--n-components", "3", "--basis-samples", "6", "--json", str(out)])
    table = capsys.readouterr().out
    figures = json.loads(out.read_text())
    for method, batch in (("sgd", 128), ("pbfgs", 1024), ("psgd", 128)):
        times = figures[method]
        assert times["reference_s"] > 0 and times["fast_s"] > 0
        assert f"| {method} ({batch}) | {times['reference_s']:.3f} | {times['fast_s']:.3f} |" in table
    assert figures["basis"]["subspace_gap"] < 1e-6  # the same subspace as scikit-learn's full PCA
    assert "| basis, 6 samples, k=3 |" in table
