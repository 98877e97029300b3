import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REFERENCE = os.path.join(ROOT, "..", "shared", "reference", "model_param_counts.json")

torch.set_num_threads(min(2, torch.get_num_threads()))


def run_script(script, *args, timeout=600):
    """Run one of the three scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="session")
def digits_samples(tmp_path_factory):
    """A short SGD run on DIGITS with resnet20: samples 0..6, shared by several tests."""
    save = tmp_path_factory.mktemp("digits_sgd")
    out = run_script("train_sgd.py", "--datasets", "DIGITS", "--arch", "resnet20", "--epochs", 6,
                     "--lr", 0.05, "--save-dir", save, "--print-freq", 100, "--randomseed", 3,
                     "--device", "cpu", "--corrupt", 0.1)
    assert out.returncode == 0, out.stderr
    return save
