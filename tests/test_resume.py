"""Exact resume: a run stopped mid-epoch and resumed ends where an uninterrupted run ends.

One real SIGKILL of a fresh interpreter (SGD); the subspace scripts are interrupted in this
interpreter at a chosen step, which exercises the same checkpoint and resume code without the
start-up of two more interpreters."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import utils
from conftest import ROOT, THREADS, Stopped, run_here, stop_training_at


def results(folder, tag):
    with open(os.path.join(folder, f"results_{tag}.json")) as f:
        return json.load(f)


def _kill_during(script, args, marker, timeout=300):
    """Start a script, SIGKILL it as soon as ``marker`` appears in its output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=THREADS)
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


def test_sgd_killed_mid_epoch_resumes_to_identical_samples(tmp_path, sgd_reference, sgd_args,
                                                          capsys):
    killed = tmp_path / "killed"
    _kill_during("train_sgd.py", [*sgd_args, "--save-dir", killed], "Epoch: [2][4/")
    assert utils.available_samples(str(killed)) == [0, 1, 2]
    assert run_here("train_sgd.py", *sgd_args, "--save-dir", killed, "--resume") == 0
    assert "resumed" in capsys.readouterr().out
    for e in range(4):
        assert (sgd_reference / f"{e}.pt").read_bytes() == (killed / f"{e}.pt").read_bytes(), e
    a, b = results(sgd_reference, "sgd"), results(killed, "sgd")
    strip = lambda r: [{k: v for k, v in e.items() if "time" not in k and k != "images_per_s"}
                       for e in r["epochs"]]
    assert strip(a) == strip(b) and a["final"] == b["final"]


@pytest.fixture(scope="module")
def short_samples(sgd_reference):
    return sgd_reference  # its samples, copied: the subspace runs write beside them


def _copy_samples(source, target):
    os.makedirs(target)
    for name in os.listdir(source):
        if name.endswith(".pt") and name[:-3].isdigit() or name in ("run.json", "noisy_labels.json"):
            (target / name).write_bytes((source / name).read_bytes())


@pytest.mark.parametrize("script,tag,extra", [
    ("train_pbfgs.py", "PBFGS", ["--batch-size", 8, "--alpha", 0.01, "--accumulate", 2]),
    ("train_psgd.py", "PSGD", ["--batch-size", 16]),
])
def test_subspace_script_stopped_and_resumed_ends_identical(short_samples, tmp_path, monkeypatch,
                                                            data_args, script, tag, extra):
    common = [*data_args, "--corrupt", 0.2, "--randomseed", 5, "--params_end", 4,
              "--n_components", 3, "--epochs", 3, "--print-freq", 1, *extra]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _copy_samples(short_samples, straight)
    _copy_samples(short_samples, stopped)
    assert run_here(script, *common, "--save-dir", straight) == 0

    stop_training_at(monkeypatch, epoch=1, step=2)
    with pytest.raises(Stopped):
        run_here(script, *common, "--save-dir", stopped)
    monkeypatch.undo()
    assert not os.path.exists(stopped / f"{tag}.pt")
    # A new run would throw the stopped one away: refused, --resume continues it
    assert run_here(script, *common, "--save-dir", stopped) == 2
    assert run_here(script, *common, "--save-dir", stopped, "--resume") == 0
    a = torch.load(straight / f"{tag}.pt", weights_only=True)
    b = torch.load(stopped / f"{tag}.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = results(straight, tag.lower()), results(stopped, tag.lower())
    assert [e["test_acc"] for e in ra["epochs"]] == [e["test_acc"] for e in rb["epochs"]]


def test_non_finite_loss_stops_with_one_line_and_keeps_the_samples(tmp_path, data_args):
    code = run_here("train_sgd.py", *data_args, "--epochs", 4, "--lr", 1e12, "--save-dir", tmp_path,
                    "--print-freq", 100)
    # SystemExit with a message: Python prints it as the one line on stderr and exits with 1
    assert isinstance(code, str) and "\n" not in code
    assert "non-finite loss" in code and "at epoch" in code and "step" in code, code
    kept = utils.available_samples(str(tmp_path))
    assert kept and kept == list(range(len(kept)))
    for e in kept:  # every sample written so far is whole
        utils.load_state(utils.sample_path(str(tmp_path), e))
    # The results say so, and the summary marks the run instead of showing an ordinary row
    results = json.loads((tmp_path / "results_sgd.json").read_text())
    assert "final" not in results and results["stopped"] == code.split("error: ")[1].split(";")[0]
    import summarize
    table = summarize.table(str(tmp_path)).splitlines()
    assert table[1].startswith("SGD") and table[1].endswith("  UNFINISHED")
    assert f"UNFINISHED: results_sgd.json: stopped: {results['stopped']}" in table
