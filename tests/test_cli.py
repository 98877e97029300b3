"""Bad input through the real command line: exit status 2, one line naming the flag or file,
nothing written. The cases are the rows of the table in README.md, so the two cannot drift apart."""
import json
import os
import re
import shlex

import pytest
import torch

import models
import utils
from conftest import ROOT, run_here, run_script


def _readme_cases():
    text = open(os.path.join(ROOT, "README.md")).read()
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
    (base / "a_file").write_text("not a folder")
    f["notdir"] = base / "a_file" / "run"
    return f


def snapshot(root):
    return sorted((p, os.path.getsize(p), os.path.getmtime(p))
                  for p in (os.path.join(d, n) for d, _, names in os.walk(root) for n in names))


CASES = _readme_cases()
# One row per script also goes through a fresh interpreter (``if __name__ == "__main__"``).
IN_SUBPROCESS = {next(i for i, r in enumerate(CASES) if r[0] == s)
                 for s in ("train_sgd.py", "train_pbfgs.py", "train_psgd.py")}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{r[0]}:{r[1]}" for r in CASES])
def test_bad_input(folders, index, capsys):
    script, arguments, what, expected = CASES[index]
    args = [a.format(**{k: str(v) for k, v in folders.items()}) for a in shlex.split(arguments)]
    base = os.path.dirname(str(folders["empty"]))
    before = snapshot(base)
    if index in IN_SUBPROCESS:
        out = run_script(script, "--device", "cpu", *args, timeout=300)
        code, stdout, stderr = out.returncode, out.stdout, out.stderr
    else:
        capsys.readouterr()
        code = run_here(script, "--device", "cpu", *args)
        stdout, stderr = capsys.readouterr()
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
    assert run_script("train_psgd.py", "--help").returncode == 0  # and from the command line


def test_importing_the_scripts_parses_nothing_and_writes_nothing(tmp_path):
    code = ("import sys; sys.argv = ['x', '--bogus']; import train_sgd, train_pbfgs, train_psgd; "
            "print(train_pbfgs.PBFGS.__name__, train_psgd.utils.project_gradients_.__name__)")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PBFGS", "project_gradients_"]
    assert os.listdir(tmp_path) == []
