"""No silent wrong run: a resume that would mix two runs is refused before any write, drawn
command lines are accepted or refused in one line, and run.sh refuses what it does not know."""
import collections
import contextlib
import io
import json
import os
import shutil
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dldr.records
import dldr.subspace
import models
import utils
from conftest import DIGITS_SUB, ROOT, run_here


def snapshot(root):
    """(path, size, mtime) of every file under root: what a refused run must leave as it was."""
    return sorted((p, os.path.getsize(p), os.stat(p).st_mtime_ns)
                  for p in (os.path.join(d, n) for d, _, names in os.walk(root) for n in names))


def refused(capsys, script, *args):
    """The one error line of a command line that must exit 2."""
    capsys.readouterr()
    code = run_here(script, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


@pytest.fixture(scope="module")
def psgd_run(digits_samples, tmp_path_factory):
    """A finished one-epoch P-SGD run beside a copy of the DIGITS samples: its checkpoint."""
    folder = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(digits_samples, folder,
                    ignore=lambda d, names: [n for n in names if not (n[:-3].isdigit() or n in (
                        "run.json", "noisy_labels.json"))])
    assert run_here("train_psgd.py", *DIGITS_SUB, "--save-dir", folder, "--epochs", 1,
                    "--batch-size", 256, "--lr", 0.3) == 0
    return folder


@pytest.mark.parametrize("change,expected", [
    (["--params_start", "1"], "--params_start 1 here, 0 there"),
    (["--n_components", "4"], "--n_components 4 here, 5 there"),
    (["--lr", "0.5"], "--lr 0.5 here, 0.3 there"),
    (["--batch-size", "128"], "--batch-size 128 here, 256 there"),
    (["--basis", "random"], None),  # another output set: nothing to resume
    (["--epochs", "0"], "--epochs 0:"),
])
def test_resume_of_another_run_is_refused_before_any_write(psgd_run, capsys, change, expected):
    argv = [*DIGITS_SUB, "--save-dir", psgd_run, "--epochs", 2, "--batch-size", 256, "--lr", 0.3,
            "--resume"]
    for i, flag in enumerate(change[::2]):  # the change replaces the flag's earlier value
        if flag in argv:
            argv[argv.index(flag) + 1] = change[2 * i + 1]
        else:
            argv += change[2 * i:2 * i + 2]
    before = snapshot(psgd_run)
    line = refused(capsys, "train_psgd.py", *argv)
    assert snapshot(psgd_run) == before
    if expected is None:
        assert "no checkpoint at" in line
    else:
        assert line.startswith(f"error: --resume: {psgd_run / 'checkpoint_psgd.pt'} holds another "
                               "run") or expected.startswith("--epochs"), line
        assert expected in line, line


def test_resume_after_a_sample_changed_is_refused(psgd_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(psgd_run, folder)
    state = torch.load(folder / "3.pt", weights_only=True)
    state["conv1.weight"] += 1e-3
    torch.save(state, folder / "3.pt")
    before = snapshot(folder)
    line = refused(capsys, "train_psgd.py", *DIGITS_SUB, "--save-dir", folder, "--epochs", 2,
                   "--batch-size", 256, "--lr", 0.3, "--resume")
    assert "the samples changed since it was written" in line and snapshot(folder) == before


def test_the_same_run_resumes(psgd_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(psgd_run, folder)
    assert run_here("train_psgd.py", *DIGITS_SUB, "--save-dir", folder, "--epochs", 2,
                    "--batch-size", 256, "--lr", 0.3, "--resume") == 0
    assert torch.load(folder / "checkpoint_psgd.pt", weights_only=True)["epoch"] == 2


def test_sgd_resume_with_another_learning_rate_is_refused(sgd_reference, sgd_args, tmp_path,
                                                          capsys):
    folder = tmp_path / "sgd"
    shutil.copytree(sgd_reference, folder)
    argv = list(sgd_args)
    argv[argv.index("--lr") + 1] = "0.2"
    before = snapshot(folder)
    line = refused(capsys, "train_sgd.py", *argv, "--save-dir", folder, "--resume")
    assert "--lr 0.2 here, 0.05 there" in line and snapshot(folder) == before


def test_a_checkpoint_that_does_not_fit_is_one_line(psgd_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(psgd_run, folder)
    ckpt = torch.load(folder / "checkpoint_psgd.pt", weights_only=True)
    del ckpt["model"]["bn1.running_var"]
    torch.save(ckpt, folder / "checkpoint_psgd.pt")
    line = refused(capsys, "train_psgd.py", *DIGITS_SUB, "--save-dir", folder, "--epochs", 2,
                   "--batch-size", 256, "--lr", 0.3, "--resume")
    assert "checkpoint_psgd.pt: does not fit --arch (no 'bn1.running_var')" in line


def test_run_sh_prints_its_usage_and_refuses_what_it_does_not_know():
    run = lambda *a: subprocess.run(["bash", os.path.join(ROOT, "run.sh"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    for flag in ("-h", "--help"):
        out = run(flag)
        assert out.returncode == 0 and "./run.sh demo" in out.stdout and not out.stderr
    for argv in (["bogus"], ["--epochs", "3"], ["demo", "extra"]):
        out = run(*argv)
        assert out.returncode == 2 and not out.stdout, argv
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")


# ---- drawn command lines -----------------------------------------------------------------------

class Accepted(Exception):
    """Raised where a command line's checks are over (torchrun's process group would start):
    everything before it reads and checks, nothing writes."""


NUMBERS = st.one_of(st.integers(-3, 12).map(str),
                    st.sampled_from(["0", "0.5", "1", "1.5", "-0.1", "nan", "inf", "1e-3", "x", "",
                                     "1,2", "0.999"]),
                    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr))
LISTS = st.one_of(NUMBERS, st.sampled_from([",", "30,50", "5,3", "4", "0,4", "3,-1", "a,b", "2,2"]))
COMMON = {"--epochs": NUMBERS, "--start-epoch": NUMBERS, "--batch-size": NUMBERS, "--lr": NUMBERS,
          "--print-freq": NUMBERS, "--save-every": NUMBERS, "--workers": NUMBERS,
          "--randomseed": NUMBERS, "--corrupt": NUMBERS, "--smalldatasets": NUMBERS,
          "--amp": st.sampled_from(["bf16", "fp16", "fp8"]),
          "--dtype": st.sampled_from(["float32", "float64", "int8"]),
          "--device": st.sampled_from(["cpu", "nonsense", "cpu:0"]),
          "--arch": st.sampled_from(["resnet8", "resnet99"]),
          "--half": st.just(None), "-e": st.just(None), "--resume": st.just(None)}
# Paths are drawn as templates: {tmp} is the test's folder, {samples} the samples' folder
PATHS = st.sampled_from(["{samples}/3.pt", "{samples}/run.json", "{tmp}/none.pt",
                         "{tmp}/missing/basis.pt", "{samples}/basis.pt"])
SAMPLES = {"--params_start": NUMBERS, "--params_end": NUMBERS, "--params_step": NUMBERS,
           "--output-tag": st.sampled_from(["k5", "a b", "-x"]), "--overwrite": st.just(None)}
SUBSPACE = {**SAMPLES, "--n_components": NUMBERS,
            "--basis": st.sampled_from(["dldr", "random", "span", "pca"]),
            "--train-start": st.sampled_from(["0", "3", "6", "9", "mean", "-1", "-2", "x"]),
            "--basis-file": PATHS, "--resume-weights": PATHS,
            "--resume": st.one_of(st.just(None), PATHS),
            "--weight-decay": NUMBERS, "--bn-reestimate": st.just(None)}
FLAGS = {
    "train_sgd.py": {**COMMON, "--momentum": NUMBERS, "--weight-decay": NUMBERS,
                     "--milestones": LISTS, "--adam-lr": NUMBERS, "--overwrite": st.just(None),
                     "--optimizer": st.sampled_from(["sgd", "adam", "lbfgs"]),
                     "--datasets": st.sampled_from(["DIGITS", "SVHN"])},
    "train_pbfgs.py": {**COMMON, **SUBSPACE, "--alpha": NUMBERS, "--gamma": NUMBERS,
                       "--accumulate": NUMBERS},
    "train_psgd.py": {**COMMON, **SUBSPACE, "--momentum": NUMBERS, "--milestones": LISTS,
                      "--alpha": NUMBERS, "--gamma": NUMBERS},
    "train_twa.py": {**COMMON, **SUBSPACE, "--momentum": NUMBERS, "--milestones": LISTS},
    "swa.py": {**SAMPLES, **{f: COMMON[f] for f in (
        "--batch-size", "--workers", "--randomseed", "--corrupt", "--smalldatasets", "--amp",
        "--dtype", "--device", "--arch", "--print-freq")}},
}


@st.composite
def command_lines(draw, script):
    chosen = draw(st.lists(st.sampled_from(sorted(FLAGS[script])), unique=True, max_size=4))
    argv = []
    for flag in chosen:
        value = draw(FLAGS[script][flag])
        argv += [flag] if value is None else [f"{flag}={value}"]
    return script, argv


def test_drawn_command_lines_are_accepted_or_refused_in_one_line(tmp_path, monkeypatch):
    samples = tmp_path / "samples"  # resnet8 DIGITS samples 0..6, with their run.json
    samples.mkdir()
    torch.manual_seed(0)
    model = models.build("resnet8", 10)
    for e in range(7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        utils.save_sample(model, str(samples), e)
    utils.atomic_write_json(str(samples / "run.json"), {
        "arch": "resnet8", "datasets": "DIGITS", "corrupt": 0.0, "smalldatasets": None,
        "randomseed": 1})

    def accept(device):
        raise Accepted

    monkeypatch.setattr(utils, "init_distributed", accept)           # train_sgd.py's
    monkeypatch.setattr(dldr.subspace, "init_distributed", accept)   # the subspace scripts'
    seen = collections.Counter()

    def check(drawn):
        script, argv = drawn
        base = ["--datasets", "DIGITS", "--arch", "resnet8"]
        if script != "train_sgd.py":  # a range the samples hold, unless a drawn flag says else
            base += ["--params_end", "7"] + (["--n_components", "3"] if script != "swa.py" else [])
        save_dir = tmp_path / "new" if script == "train_sgd.py" else samples
        argv = [a.format(tmp=tmp_path, samples=samples) for a in argv]
        before = snapshot(tmp_path)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = run_here(script, *base, "--save-dir", save_dir, *argv)
            except Accepted:
                code = "accepted"
        lines = err.getvalue().strip().splitlines()
        if code == "accepted":
            assert lines == [], lines
        else:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)
        assert snapshot(tmp_path) == before and not os.path.exists(tmp_path / "new")
        seen[script, code == "accepted"] += 1

    for script in sorted(FLAGS):  # each script as many command lines
        settings(max_examples=50, deadline=None, derandomize=True, database=None)(
            given(command_lines(script))(check))()
    per_script = collections.Counter(script for script, _ in seen.elements())
    assert min(per_script.values()) >= 45, seen
    assert all(seen[script, True] >= 5 and seen[script, False] >= 5 for script in FLAGS), seen


# ---- what --resume takes, and what a new run may replace ---------------------------------------

def test_resume_takes_only_this_scripts_checkpoint_and_names_what_a_file_is(psgd_run, tmp_path,
                                                                            capsys):
    state = torch.load(psgd_run / "PSGD.pt", weights_only=True)
    torch.save({"epoch": 1, "state_dict": state, "best_prec1": 50.0}, tmp_path / "refine_1.th")
    argv = [*DIGITS_SUB, "--save-dir", psgd_run, "--epochs", 2, "--batch-size", 256, "--lr", 0.3]
    before = snapshot(psgd_run)
    for path, what in ((psgd_run / "PSGD.pt", "holds model weights only (a final model"),
                       (psgd_run / "3.pt", "holds a sample of the trajectory (the weights after "
                                           "epoch 3)"),
                       (tmp_path / "refine_1.th", "holds a checkpoint of the authors' scripts")):
        line = refused(capsys, "train_psgd.py", *argv, "--resume", path)
        assert line.startswith(f"error: --resume: {path} {what}") and \
            f"use --resume-weights {path}" in line, line
    line = refused(capsys, "train_psgd.py", *argv, "--resume", "--resume-weights", tmp_path)
    assert "--resume-weights starts a new run" in line
    assert snapshot(psgd_run) == before


def test_a_finished_run_is_replaced_only_with_overwrite_and_resume_weights_is_recorded(
        psgd_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(psgd_run, folder)
    argv = [*DIGITS_SUB, "--save-dir", folder, "--epochs", 1, "--batch-size", 256, "--lr", 0.3]
    old = json.load(open(folder / "results_psgd.json"))
    before = snapshot(folder)
    line = refused(capsys, "train_psgd.py", *argv[:-1], 0.2)  # another run, same outputs
    assert line == (f"error: --save-dir {folder} already holds a finished run (results_psgd.json, "
                    "PSGD.pt and checkpoint_psgd.pt); pass --resume with more --epochs to extend "
                    "it, pass --overwrite to replace it, or use another --output-tag or --save-dir")
    assert snapshot(folder) == before
    # The results record the samples they were made from: the trajectory's fingerprint
    trajectory = utils.Trajectory(str(folder), 0, 7)
    assert old["sample_fingerprint"] == {"epochs": list(range(7)),
                                         "sha256": trajectory.fingerprint()}
    assert dldr.records.samples_fingerprint(str(folder), range(7)) == trajectory.fingerprint()
    # --overwrite with --resume-weights: a new run from the old final model, which says so
    weights = tmp_path / "PSGD_before.pt"
    shutil.copy(folder / "PSGD.pt", weights)
    assert run_here("train_psgd.py", *argv, "--overwrite", "--resume-weights", weights) == 0
    out = capsys.readouterr().out
    assert f"=> starting from the weights of {weights} (--resume-weights)" in out
    new = json.load(open(folder / "results_psgd.json"))
    assert new["resumed_from_weights"] == str(weights)
    # its start is the old run's final model: the same evaluation, to the bit
    assert new["start"]["test_acc"] == old["final"]["test_acc"] == old["epochs"][-1]["test_acc"]
    assert new["start"]["test_loss"] == old["final"]["test_loss"]
    # its coordinates and distance are taken from where it started: those weights
    model = models.build("resnet8", 10)
    start, end = (utils.param_vector_from_state(utils.load_state(str(p)), model).double()
                  for p in (weights, folder / "PSGD.pt"))
    assert new["epochs"][-1]["distance"] == pytest.approx((end - start).norm().item(), rel=1e-5)
    # and so after a resume, from the checkpoint's copy of them: the file may have been replaced
    # since (issue 33), here by sample 0
    shutil.copy(folder / "0.pt", weights)
    assert run_here("train_psgd.py", *DIGITS_SUB, "--save-dir", folder, "--epochs", 2,
                    "--batch-size", 256, "--lr", 0.3, "--resume") == 0
    end = utils.param_vector_from_state(utils.load_state(str(folder / "PSGD.pt")), model).double()
    extended = json.load(open(folder / "results_psgd.json"))
    assert extended["epochs"][-1]["distance"] == pytest.approx((end - start).norm().item(),
                                                               rel=1e-5)
    # Resumed without the flag (as the resume command line drops it), the run keeps its record
    ckpt = torch.load(folder / "checkpoint_psgd.pt", weights_only=True)
    identity = {k: v for k, v in ckpt["run"].items() if k != "resumed_from_weights"}
    utils.check_same_run(str(folder / "checkpoint_psgd.pt"), ckpt, identity)
    assert identity == ckpt["run"] and identity["resumed_from_weights"] == str(weights)
    command = utils.resume_command(["--lr", "0.3", "--resume-weights", str(weights), "--overwrite"])
    assert command.endswith(" --lr 0.3 --resume") and str(weights) not in command
