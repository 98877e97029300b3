"""experiments/digits.sh: REPRODUCTION.md is generated from measured runs, not written by hand."""
import json
import os
import subprocess
import sys

from conftest import ROOT

TINY = {"SEEDS": "1", "NOISES": "0.2", "SIZES": "2", "SGD_EPOCHS": "2", "PSGD_EPOCHS": "1",
        "PBFGS_EPOCHS": "1", "RANDOM_EPOCHS": "1", "PARAMS_END": "3", "SMALL": "0.05", "JOBS": "2"}


def run_experiment(tmp_path, name):
    runs, report = tmp_path / name, tmp_path / f"{name}.md"
    env = dict(os.environ, **TINY, RUNS_DIR=str(runs), REPORT=str(report), PYTHON=sys.executable)
    out = subprocess.run(["bash", os.path.join(ROOT, "experiments", "digits.sh")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return runs, report.read_text()


def test_report_is_generated_from_the_runs(tmp_path):
    """One tiny run of the script. That fresh runs with the same seed repeat their numbers is
    what tests/test_resume.py shows for each script (an uninterrupted run against a killed and
    resumed one, byte for byte); here: the report holds the runs' numbers, and is a pure
    function of them."""
    runs, first = run_experiment(tmp_path, "a")
    # The numbers are the runs' own: SGD's final accuracy and P-BFGS's appear as recorded.
    folder = runs / "noise0.2_seed1"
    sgd = json.loads((folder / "results_sgd.json").read_text())["epochs"][-1]["test_acc"]
    pbfgs = json.loads((folder / "results_pbfgs_k2.json").read_text())["epochs"][-1]["test_acc"]
    assert f"| SGD, all parameters, final | {sgd:.1f} |" in first
    assert f"| P-BFGS, 2 DLDR directions, final | {pbfgs:.1f} |" in first
    for claim in ("trajectory lives in a few dimensions", "random subspace", "label noise"):
        assert claim in first
    # A finished run is not run again: the script's second pass only rewrites the report.
    env = dict(os.environ, **TINY, RUNS_DIR=str(runs), REPORT=str(tmp_path / "c.md"),
               PYTHON=sys.executable)
    out = subprocess.run(["bash", os.path.join(ROOT, "experiments", "digits.sh")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.count("done already") == 4, out.stdout
    assert (tmp_path / "c.md").read_text() == first
