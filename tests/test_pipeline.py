"""The three scripts end to end on DIGITS, and exact resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import utils
from conftest import ROOT, run_script

SUB = ["--datasets", "DIGITS", "--arch", "resnet20", "--device", "cpu", "--randomseed", "3",
       "--corrupt", "0.1", "--params_start", "0", "--params_end", "7", "--n_components", "5",
       "--print-freq", "100"]


def results(folder, tag):
    with open(os.path.join(folder, f"results_{tag}.json")) as f:
        return json.load(f)


def test_sgd_writes_samples_provenance_noise_and_results(digits_samples):
    assert utils.available_samples(str(digits_samples)) == list(range(7))
    run = json.load(open(digits_samples / "run.json"))
    assert run["arch"] == "resnet20" and run["num_classes"] == 10 and run["corrupt"] == 0.1
    assert run["versions"]["torch"] == torch.__version__
    noise = json.load(open(digits_samples / "noisy_labels.json"))
    assert len(noise["indices"]) == round(0.1 * 1437)
    res = results(digits_samples, "sgd")
    assert [e["epoch"] for e in res["epochs"]] == list(range(7))
    assert res["epochs"][-1]["test_acc"] > 80.0  # resnet20 learns DIGITS (10% noisy labels) in 6 epochs


def test_subspace_methods_and_random_control(digits_samples):
    folder = str(digits_samples)
    out = run_script("train_psgd.py", *SUB, "--save-dir", folder, "--epochs", 2, "--batch-size", 64)
    assert out.returncode == 0, out.stderr
    assert "explained variance" in out.stdout and "Epoch: [1][" in out.stdout
    out = run_script("train_pbfgs.py", *SUB, "--save-dir", folder, "--epochs", 2, "--batch-size", 128)
    assert out.returncode == 0, out.stderr
    out = run_script("train_psgd.py", *SUB, "--save-dir", folder, "--epochs", 1, "--batch-size", 64,
                     "--basis", "random")
    assert out.returncode == 0, out.stderr
    psgd, pbfgs, rnd = results(folder, "psgd"), results(folder, "pbfgs"), results(folder, "psgd_random")
    assert len(psgd["explained_variance_ratio"]) == 5 and sum(psgd["explained_variance_ratio"]) < 1
    acc = lambda r: r["epochs"][-1]["test_acc"]
    # From the random initialisation (sample 0), the trajectory's 5 directions train the network;
    # 5 random directions do not.
    assert acc(psgd) > 80.0 and acc(pbfgs) > 80.0
    assert acc(rnd) < 40.0
    for name in ("PSGD.pt", "PBFGS.pt", "PSGD_random.pt"):
        state = torch.load(os.path.join(folder, name), weights_only=True)
        assert "linear.weight" in state
    # The final P-SGD model lies in sample 0 + span(P).
    import models
    model = models.build("resnet20", 10)
    samples = utils.load_sample_matrix(folder, model, 0, 7, "resnet20")
    basis, _ = utils.subspace_basis(samples, 5)
    model.load_state_dict(torch.load(os.path.join(folder, "PSGD.pt"), weights_only=True))
    delta = utils.flat_params(model).double() - samples[0].double()
    outside = delta - basis.T @ (basis @ delta)
    assert outside.norm() < 1e-4 * delta.norm()


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
            "--smalldatasets", 0.3, "--batch-size", 32, "--print-freq", 2, "--corrupt", 0.2,
            "--randomseed", 5, "--lr", 0.05]


def test_sgd_killed_mid_epoch_resumes_to_identical_samples(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = run_script("train_sgd.py", *SGD_ARGS, "--save-dir", straight)
    assert out.returncode == 0, out.stderr
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


@pytest.mark.parametrize("script,tag,extra", [
    ("train_pbfgs.py", "PBFGS", ["--batch-size", 64, "--alpha", 0.01]),
    ("train_psgd.py", "PSGD", ["--batch-size", 32]),
])
def test_subspace_script_killed_and_resumed_ends_identical(tmp_path, script, tag, extra):
    samples = tmp_path / "samples"
    out = run_script("train_sgd.py", *SGD_ARGS[:7], 3, *SGD_ARGS[8:], "--save-dir", samples)
    assert out.returncode == 0, out.stderr
    common = ["--datasets", "DIGITS", "--arch", "resnet20", "--device", "cpu", "--smalldatasets", 0.3,
              "--corrupt", 0.2, "--randomseed", 5, "--params_end", 4, "--n_components", 3,
              "--epochs", 3, "--print-freq", 1, *extra]
    straight = tmp_path / "straight"
    os.makedirs(straight)
    for e in range(4):  # the same samples in two folders
        for d in (straight,):
            (d / f"{e}.pt").write_bytes((samples / f"{e}.pt").read_bytes())
    for name in ("run.json", "noisy_labels.json"):
        (straight / name).write_bytes((samples / name).read_bytes())
    out = run_script(script, *common, "--save-dir", straight)
    assert out.returncode == 0, out.stderr
    _kill_during(script, [*common, "--save-dir", samples], "Epoch: [1][2/")
    out = run_script(script, *common, "--save-dir", samples, "--resume")
    assert out.returncode == 0, out.stderr
    a = torch.load(straight / f"{tag}.pt", weights_only=True)
    b = torch.load(samples / f"{tag}.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
