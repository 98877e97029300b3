"""Bad input through the real command line: exit status 2, one line naming the flag or file,
nothing written. The cases are the rows of the table in docs/bad-input.md, so the two cannot drift
apart."""
import json
import os
import re
import shlex

import pytest
import torch

import models
import utils
from conftest import ROOT, run_here


def _documented_cases():
    text = open(os.path.join(ROOT, "docs", "bad-input.md")).read()
    block = text.split("<!-- bad-input:start -->")[1].split("<!-- bad-input:end -->")[0]
    rows = re.findall(r"^\| `(\w+\.py) (.*?)` \| (.*?) \| `(.*?)` \|$", block, re.M)
    assert len(rows) >= 15
    return rows


def _samples(folder, arch="resnet20", n=5, record=True):
    folder.mkdir()
    torch.manual_seed(0)
    model = models.build(arch, 10)
    for e in range(n):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        utils.save_sample(model, str(folder), e)
    if record:
        json.dump({"arch": arch, "datasets": "DIGITS", "corrupt": 0.0, "smalldatasets": None,
                   "randomseed": 1}, open(folder / "run.json", "w"))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_input")
    f = {"new": base / "new_run", "empty": base / "empty"}
    f["empty"].mkdir()
    f["samples"] = _samples(base / "samples")
    f["resnet32"] = _samples(base / "resnet32", arch="resnet32", record=False)
    f["truncated"] = _samples(base / "truncated", record=False)
    data = (f["truncated"] / "2.pt").read_bytes()
    (f["truncated"] / "2.pt").write_bytes(data[: len(data) // 2])
    f["foreign"] = _samples(base / "foreign", record=False)
    torch.save({"weights": [1, 2, 3]}, f["foreign"] / "3.pt")
    f["randombytes"] = _samples(base / "randombytes", record=False)
    (f["randombytes"] / "2.pt").write_bytes(bytes([0x80]) + os.urandom(4095))  # a pickle's start
    f["nobuffers"] = _samples(base / "nobuffers", record=False)
    state = torch.load(f["nobuffers"] / "0.pt", weights_only=True)
    params = {name for name, _ in models.build("resnet20", 10).named_parameters()}
    torch.save({k: v for k, v in state.items() if k in params}, f["nobuffers"] / "0.pt")
    (base / "a_file").write_text("not a folder")
    f["notdir"] = base / "a_file" / "run"
    return f


def snapshot(root):
    return sorted((p, os.path.getsize(p), os.path.getmtime(p))
                  for p in (os.path.join(d, n) for d, _, names in os.walk(root) for n in names))


CASES = _documented_cases()


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{r[0]}:{r[1]}" for r in CASES])
def test_bad_input(folders, index, capsys):
    script, arguments, what, expected = CASES[index]
    args = [a.format(**{k: str(v) for k, v in folders.items()}) for a in shlex.split(arguments)]
    base = os.path.dirname(str(folders["empty"]))
    before = snapshot(base)
    capsys.readouterr()
    code = run_here(script, "--device", "cpu", *args)  # the command lines' own path, without
    stdout, stderr = capsys.readouterr()                 # a new interpreter's start-up each
    assert code == 2, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and expected.format(
        **{k: str(v) for k, v in folders.items()}) in lines[0], lines[0]
    assert snapshot(base) == before, "a failed command must write nothing"
    assert not os.path.exists(folders["new"])


def test_help_of_each_script_lists_the_authors_flags():
    import train_pbfgs
    import train_psgd
    import train_sgd
    common = ("--arch", "--datasets", "--epochs", "--lr", "--batch-size", "--save-dir", "--corrupt",
              "--smalldatasets", "--randomseed", "--workers", "--print-freq", "--resume", "--evaluate",
              "--save-every", "--half", "--weight-decay")
    helps = {m.__name__: m.build_parser().format_help() for m in (train_sgd, train_pbfgs, train_psgd)}
    for name, text in helps.items():
        for flag in common:
            assert flag in text, (name, flag)
    for flag in ("--n_components", "--params_start", "--params_end", "--alpha", "--gamma", "--accumulate"):
        assert flag in helps["train_pbfgs"]
    for flag in ("--momentum", "--optimizer", "--milestones"):
        assert flag in helps["train_sgd"]
    assert run_here("train_psgd.py", "--help") == 0  # and through its entry point


SCRIPTS_IN_A_FRESH_INTERPRETER = """
import runpy, sys
sys.argv = ["x", "--bogus"]
import train_sgd, train_pbfgs, train_psgd
print(train_pbfgs.PBFGS.__name__, train_psgd.utils.project_gradients_.__name__)
for script in ("train_sgd.py", "train_pbfgs.py", "train_psgd.py"):
    sys.argv = [script, "--epochs", "-1"]
    try:
        runpy.run_path(ROOT + "/" + script, run_name="__main__")
    except SystemExit as e:
        print(script, e.code)
"""


def test_importing_the_scripts_parses_nothing_and_their_command_lines_refuse_bad_input(tmp_path):
    """In a fresh interpreter: importing the three scripts parses no argument and writes nothing;
    run as ``__main__`` (as ``python train_X.py`` does), bad input is one line and exit status 2."""
    import subprocess
    import sys
    code = SCRIPTS_IN_A_FRESH_INTERPRETER.replace("ROOT", repr(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["PBFGS project_gradients_", "train_sgd.py 2",
                                           "train_pbfgs.py 2", "train_psgd.py 2"]
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: argument --epochs") for e in errors)
    assert os.listdir(tmp_path) == []
