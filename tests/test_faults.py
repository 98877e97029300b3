"""Runs that survive faults, through the real command line: two writers on one folder, a full disk
at a chosen moment, SIGTERM and SIGINT, and crafted files. After each, the run resumes to the
samples of an sgd_reference run, byte for byte."""
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch

import dldr.files
import utils
from conftest import ROOT, THREADS, Exploit, run_here

ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=THREADS)


def same_samples(folder, reference):
    assert utils.available_samples(str(folder)) == [0, 1, 2, 3]
    for e in range(4):
        assert (folder / f"{e}.pt").read_bytes() == (reference / f"{e}.pt").read_bytes(), e
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]


def start(script, *args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=ENV)


def wait_for(proc, marker, timeout=120):
    deadline = time.time() + timeout
    for line in proc.stdout:
        if marker in line:
            return
        assert time.time() < deadline
    raise AssertionError(f"the run ended before printing {marker!r}: {proc.stderr.read()}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sgd_args):
    """The module's command-line runs, started together so that their interpreters start side by
    side: a run that another will try to share its folder with, a run whose disk fills, and a run
    that a cluster preempts (SIGTERM, sent by a watcher as soon as it prints its third batch of
    epoch 1)."""
    base = tmp_path_factory.mktemp("faults")
    procs = {"writer": start("train_sgd.py", *sgd_args, "--save-dir", base / "shared"),
             "full": subprocess.Popen(
                 [sys.executable, os.path.join(ROOT, "tests", "fault_inject.py"), "train_sgd.py",
                  *sgd_args, "--save-dir", str(base / "full")], stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True, cwd=ROOT,
                 env=dict(ENV, DLDR_FAIL_WRITE="2.pt:1")),
             "preempted": start("train_sgd.py", *sgd_args, "--save-dir", base / "preempted")}

    def preempt(proc):
        for line in proc.stdout:
            if "Epoch: [1][2/" in line:
                proc.send_signal(signal.SIGTERM)
                break

    watcher = threading.Thread(target=preempt, args=(procs["preempted"],), daemon=True)
    watcher.start()
    yield base, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.end_to_end
def test_a_second_writer_on_the_folder_exits_2_and_leaves_the_first_intact(runs, sgd_reference,
                                                                          sgd_args, data_args,
                                                                          capsys):
    base, procs = runs
    folder, first = base / "shared", procs["writer"]
    wait_for(first, "Start training")  # it holds the folder's lock
    capsys.readouterr()
    code = run_here("train_sgd.py", *sgd_args[:-4], "--randomseed", 6, "--lr", 0.05,
                    "--save-dir", folder)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert str(folder) in lines[0] and f"process {first.pid}" in lines[0], lines[0]
    first.communicate(timeout=300)
    assert first.returncode == 0
    same_samples(folder, sgd_reference)
    # Runs that write other files share the folder: a subspace run beside it takes its own lock.
    assert run_here("train_psgd.py", *data_args, "--corrupt", 0.2, "--randomseed", 5,
                    "--params_end", 3, "--n_components", 2, "--epochs", 1, "--save-dir", folder) == 0


@pytest.mark.end_to_end  # the module's runs fixture: 3 interpreters side by side, about 16 s
def test_a_full_disk_stops_with_one_line_and_resume_loses_nothing(runs, sgd_reference, capsys):
    """The disk fills while sample 2 is written, after its epoch's checkpoint: the run stops, no
    partial file is left, and --resume writes the missing sample from the checkpoint."""
    base, procs = runs
    folder = base / "full"
    _, err = procs["full"].communicate(timeout=300)
    lines = err.strip().splitlines()
    assert procs["full"].returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {folder / '2.pt'}: cannot write it (No space left on device)")
    assert "checkpoint.pt holds the run after 2 epochs" in lines[0]
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp")]  # no partial file
    assert "2.pt" not in os.listdir(folder)
    command = shlex.split(lines[0].split("continue with: ")[1])
    assert command[0] == "python" and command[-1] == "--resume"
    capsys.readouterr()
    assert run_here(os.path.basename(command[1]), *command[2:]) == 0
    assert f"resumed from {folder / 'checkpoint.pt'} after epoch 2" in capsys.readouterr().out
    same_samples(folder, sgd_reference)


@pytest.mark.end_to_end  # with the runs fixture, after the suite in .ci/run
def test_sigterm_stops_with_the_resume_command_and_resume_is_exact(runs, sgd_reference):
    base, procs = runs
    folder, proc = base / "preempted", procs["preempted"]
    proc.wait(timeout=300)
    lines = proc.stderr.read().strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1, lines
    # The step it stopped at is checkpointed: the resume goes on from inside epoch 1
    assert re.match(r"stopped by SIGTERM during epoch 1; checkpoint\.pt holds the run after 1 "
                    r"epochs and \d+ batches of the next; resume with: python ", lines[0]), lines[0]
    command = shlex.split(lines[0].split("resume with: ")[1])
    assert run_here(os.path.basename(command[1]), *command[2:]) == 0
    same_samples(folder, sgd_reference)


def test_sigint_during_a_write_finishes_it_then_stops(tmp_path, monkeypatch, capsys, sgd_args):
    """Ctrl-C: exit status 130 and the one line, no traceback; a signal that arrives while a file
    is being written stops the run only once the file is whole."""
    save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "epoch" in obj and obj["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of writing checkpoint.pt
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    code = run_here("train_sgd.py", *sgd_args, "--save-dir", tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and err[0].startswith("stopped by SIGINT during epoch 0; "
                                                               "checkpoint.pt holds the run after 1")
    assert utils.safe_load(str(tmp_path / "checkpoint.pt"))["epoch"] == 1  # whole
    assert signal.getsignal(signal.SIGINT) is not dldr.files.on_signal  # handler put back


def test_a_crafted_file_is_refused_in_one_line_that_does_not_suggest_disabling_the_check(
        tmp_path, capsys, sgd_args):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"model": Exploit(marker)}, crafted, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = run_here("train_sgd.py", *sgd_args, "--save-dir", tmp_path / "run", "--resume",
                        crafted)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not caught  # no library warning before the line
    assert lines[0].startswith(f"error: {crafted}: refused: it holds more than tensors")
    assert "was not loaded and nothing in it was executed" in lines[0]
    assert "weights_only" not in lines[0] and not marker.exists()
    samples = tmp_path / "samples"  # and as a sample of a subspace run
    samples.mkdir()
    utils.save_sample(torch.nn.Linear(2, 2), str(samples), 0)
    with open(samples / "1.pt", "wb") as f:
        pickle.dump(Exploit(marker), f)
    with pytest.raises(utils.UsageError, match=r"1\.pt: refused: it holds more than tensors"):
        utils.load_state(str(samples / "1.pt"))
    assert not marker.exists()
