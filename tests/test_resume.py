"""Exact resume: a script killed with SIGKILL mid-epoch and resumed ends where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import utils
from conftest import ROOT, run_here, run_script


def results(folder, tag):
    with open(os.path.join(folder, f"results_{tag}.json")) as f:
        return json.load(f)


def _kill_during(script, args, marker, timeout=300):
    """Start a script, SIGKILL it as soon as ``marker`` appears in its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env)
    deadline = time.time() + timeout
    for line in proc.stdout:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


SGD_ARGS = ["--datasets", "DIGITS", "--arch", "resnet20", "--device", "cpu", "--epochs", 4,
            "--smalldatasets", 0.2, "--batch-size", 32, "--print-freq", 2, "--corrupt", 0.2,
            "--randomseed", 5, "--lr", 0.05]


def test_sgd_killed_mid_epoch_resumes_to_identical_samples(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted reference runs in this interpreter (conftest.run_here).
    assert run_here("train_sgd.py", *SGD_ARGS, "--save-dir", straight) == 0
    _kill_during("train_sgd.py", [*SGD_ARGS, "--save-dir", killed], "Epoch: [2][4/")
    assert utils.available_samples(str(killed)) == [0, 1, 2]
    out = run_script("train_sgd.py", *SGD_ARGS, "--save-dir", killed, "--resume")
    assert out.returncode == 0, out.stderr
    assert "resumed" in out.stdout
    for e in range(5):
        assert (straight / f"{e}.pt").read_bytes() == (killed / f"{e}.pt").read_bytes(), e
    a, b = results(straight, "sgd"), results(killed, "sgd")
    strip = lambda r: [{k: v for k, v in e.items() if "time" not in k and k != "images_per_s"}
                       for e in r["epochs"]]
    assert strip(a) == strip(b)


@pytest.fixture(scope="module")
def short_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("short_sgd")
    out = run_script("train_sgd.py", *SGD_ARGS[:7], 3, *SGD_ARGS[8:], "--save-dir", folder)
    assert out.returncode == 0, out.stderr
    return folder


def _copy_samples(source, target):
    os.makedirs(target)
    for name in os.listdir(source):
        if name.endswith(".pt") and name[:-3].isdigit() or name in ("run.json", "noisy_labels.json"):
            (target / name).write_bytes((source / name).read_bytes())


@pytest.mark.parametrize("script,tag,extra", [
    ("train_pbfgs.py", "PBFGS", ["--batch-size", 64, "--alpha", 0.01]),
    ("train_psgd.py", "PSGD", ["--batch-size", 32]),
])
def test_subspace_script_killed_and_resumed_ends_identical(short_samples, tmp_path, script, tag, extra):
    common = ["--datasets", "DIGITS", "--arch", "resnet20", "--device", "cpu", "--smalldatasets", 0.2,
              "--corrupt", 0.2, "--randomseed", 5, "--params_end", 4, "--n_components", 3,
              "--epochs", 3, "--print-freq", 1, *extra]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _copy_samples(short_samples, straight)
    _copy_samples(short_samples, killed)
    assert run_here(script, *common, "--save-dir", straight) == 0
    _kill_during(script, [*common, "--save-dir", killed], "Epoch: [1][2/")
    assert not os.path.exists(killed / f"{tag}.pt")
    out = run_script(script, *common, "--save-dir", killed, "--resume")
    assert out.returncode == 0, out.stderr
    a = torch.load(straight / f"{tag}.pt", weights_only=True)
    b = torch.load(killed / f"{tag}.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_one_line_and_keeps_the_samples(tmp_path):
    out = run_script("train_sgd.py", "--datasets", "DIGITS", "--smalldatasets", 0.1, "--device", "cpu",
                     "--epochs", 4, "--lr", 1e12, "--save-dir", tmp_path, "--print-freq", 100)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert "non-finite loss" in line and "at epoch" in line and "step" in line, line
    kept = utils.available_samples(str(tmp_path))
    assert kept and kept == list(range(len(kept)))
    for e in kept:  # every sample written so far is whole
        utils.load_state(utils.sample_path(str(tmp_path), e))
