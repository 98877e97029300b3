"""bench/whole_run.py at toy size: samples made, P-SGD and P-BFGS each run plainly and under
cProfile, and the profile split into phases that add up to the profiled process."""
import json
import os
import re
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import whole_run  # noqa: E402


@pytest.mark.end_to_end  # six processes start torch (about 35 s): after the suite, in .ci/run
def test_toy_whole_run_splits_both_runs_into_phases_that_add_up(tmp_path, capsys):
    out = tmp_path / "whole_run.json"
    samples = tmp_path / "samples"
    # A finished run of the user's in the folder, under the name a bench run had before
    samples.mkdir()
    (samples / "results_psgd.json").write_text('{"epochs": [], "final": {"test_acc": 90.0}}')
    whole_run.main(["--toy", "--threads", "1", "--json", str(out), "--samples", str(samples),
                    "--psgd-batch-size", "48", "--pbfgs-batch-size", "96"])
    printed = capsys.readouterr().out
    # The batches asked for are the runs' (their results files) and the header's
    assert "P-SGD (batch 48) and P-BFGS (batch 96)" in printed
    for name, batch in (("psgd", 48), ("pbfgs", 96)):
        record = json.loads((samples / f"results_{name}_{whole_run.TAG}.json").read_text())
        assert record["args"]["batch_size"] == batch and len(record["epochs"]) == 2
    # The user's run untouched, no profile left behind
    assert json.loads((samples / "results_psgd.json").read_text())["final"]["test_acc"] == 90.0
    assert not [n for n in os.listdir(samples) if n.endswith(".prof")]
    figures = json.loads(out.read_text())
    assert figures["machine"]["omp_num_threads"] == "1" and figures["sgd_s"] > 0
    assert list(figures["methods"]) == list(whole_run.METHODS)
    for name, f in figures["methods"].items():
        phases = f["phases"]
        assert list(phases) == whole_run.ROWS, name
        # Disjoint rows: none is negative, "other" included (overlapping rows would drive it
        # below 0), and together they are the profiled process
        assert all(s >= -1e-6 for s in phases.values()), (name, phases)
        assert abs(sum(phases.values()) - f["profiled_s"]) < 1e-6
        assert phases["training steps"] > 0 and phases["imports (before main)"] > 0
        assert f["whole_s"] > 0
        # One BatchNorm pass inside each evaluation, which also runs the test set
        evaluations = [phases[row] for row in whole_run.BN_IN]
        assert 0 < f["bn_pass_s"] < min(evaluations)
        assert 0 <= f["lazy_imports_s"] <= f["profiled_s"] - phases[whole_run.START]
    # The table: every phase once per table, and each column's shares add up to 100%
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines()
            if line.startswith("| ")}
    for phase in whole_run.ROWS:
        assert phase in rows, phase
    for column in range(len(whole_run.METHODS)):
        shares = [float(re.findall(r"\| ([\d.]+)%", rows[phase])[column])
                  for phase in whole_run.ROWS]
        assert abs(sum(shares) - 100) < 0.05 * len(shares) + 1e-9
    assert "machine: " in printed and "OMP_NUM_THREADS=1" in printed
    # The authors' part: the run less the evaluations and diagnostics their scripts do not make
    ratios = dict(re.findall(r"(P-SGD|P-BFGS) ([\d.]+)x", printed.split("authors' part: ")[-1]))
    for name, f in figures["methods"].items():
        part = whole_run.authors_part(f)
        assert 0 < part < f["profiled_s"] - f["bn_pass_s"], name
        assert abs(float(ratios[whole_run.TITLES[name]]) - f["profiled_s"] / part) < 0.006
