"""The codebase's shape: the README's P-BFGS loop runs as written, files stay small, every --arch
is defined under its own name."""
import os
import re
import subprocess

import torch

import models
import utils
from conftest import ROOT


def readme_block(name):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0]
    return block.split("```python\n")[1].split("```")[0]


def test_readme_pbfgs_loop_runs_and_stays_in_the_subspace(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "demo_runs" / "digits_resnet20_seed1"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = models.build("resnet20", 10)
    drift = [torch.randn_like(p) for p in model.parameters()]
    with torch.no_grad():  # samples 0..10 along a noisy line, as a trajectory
        for e in range(11):
            utils.save_sample(model, str(folder), e)
            for p, d in zip(model.parameters(), drift):
                p.add_(0.01 * d + 0.002 * torch.randn_like(p))
    monkeypatch.chdir(tmp_path)
    digits = utils.load_digits(True)
    monkeypatch.setattr(utils, "load_digits", lambda train: digits.subset(256))  # 2 batches
    scope = {}
    exec(compile(readme_block("pbfgs-loop"), "README.md", "exec"), scope)
    assert capsys.readouterr().out.count("line-search shrinks") == 2
    opt, trained = scope["opt"], scope["model"]
    assert len(opt.search_steps) == 4  # 2 epochs x 2 batches
    start = utils.load_sample_matrix(str(folder), trained, [0], "resnet20")[0].double()
    delta = torch.nn.utils.parameters_to_vector(trained.parameters()).double() - start
    basis = scope["basis"]
    assert delta.norm() > 0 and (delta - basis.T @ (basis @ delta)).norm() < 1e-4 * delta.norm()


def test_no_source_file_outside_tests_is_over_600_lines():
    tracked = subprocess.run(["git", "-C", ROOT, "ls-files", "*.py"], capture_output=True,
                             text=True).stdout.split() or [
        os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
        if f.endswith(".py") and ".venv" not in d]
    sizes = {path: sum(1 for _ in open(os.path.join(ROOT, path))) for path in tracked
             if not path.startswith("tests/") and os.path.exists(os.path.join(ROOT, path))}
    assert sizes and max(sizes.values()) <= 620, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_every_arch_is_defined_under_its_own_name():
    sources = "".join(open(os.path.join(ROOT, "models", f)).read()
                      for f in os.listdir(os.path.join(ROOT, "models")) if f.endswith(".py"))
    for name in models.names():
        assert re.search(rf"^@register\ndef {name}\(", sources, re.M), name
