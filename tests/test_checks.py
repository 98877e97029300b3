"""No silent wrong run: a resume that would mix two runs is refused before any write, drawn
command lines are accepted or refused in one line, and run.sh refuses what it does not know."""
import collections
import contextlib
import io
import os
import shutil
import subprocess

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
SUBSPACE = {"--n_components": NUMBERS, "--params_start": NUMBERS, "--params_end": NUMBERS,
            "--params_step": NUMBERS, "--basis": st.sampled_from(["dldr", "random", "pca"]),
            "--weight-decay": NUMBERS, "--output-tag": st.sampled_from(["k5", "a b", "-x"]),
            "--bn-reestimate": st.just(None)}
FLAGS = {
    "train_sgd.py": {**COMMON, "--momentum": NUMBERS, "--weight-decay": NUMBERS,
                     "--milestones": LISTS, "--adam-lr": NUMBERS, "--overwrite": st.just(None),
                     "--optimizer": st.sampled_from(["sgd", "adam", "lbfgs"]),
                     "--datasets": st.sampled_from(["DIGITS", "SVHN"])},
    "train_pbfgs.py": {**COMMON, **SUBSPACE, "--alpha": NUMBERS, "--gamma": NUMBERS,
                       "--accumulate": NUMBERS},
    "train_psgd.py": {**COMMON, **SUBSPACE, "--momentum": NUMBERS, "--milestones": LISTS,
                      "--alpha": NUMBERS, "--gamma": NUMBERS},
}


@st.composite
def command_lines(draw):
    script = draw(st.sampled_from(sorted(FLAGS)))
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

    @settings(max_examples=240, deadline=None, derandomize=True, database=None)
    @given(command_lines())
    def check(drawn):
        script, argv = drawn
        base = ["--datasets", "DIGITS", "--arch", "resnet8"]
        if script != "train_sgd.py":  # a range the samples hold, unless a drawn flag says else
            base += ["--params_end", "7", "--n_components", "3"]
        save_dir = tmp_path / "new" if script == "train_sgd.py" else samples
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

    check()
    per_script = collections.Counter(script for script, _ in seen.elements())
    assert sum(per_script.values()) >= 200 and min(per_script.values()) >= 40, seen
    assert all(seen[script, True] >= 5 and seen[script, False] >= 5 for script in FLAGS), seen
