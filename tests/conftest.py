import importlib
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


def run_here(script, *args):
    """Exit status of ``python script args`` run through the script's own entry point in this
    interpreter: the same code path as run_script without a new interpreter's start-up (~4 s).
    The tests set 2 threads, as run_script's subprocesses, so results match theirs bit for bit."""
    import utils
    module = importlib.import_module(script[:-3])
    try:
        utils.run_main(module.main, [str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="session")
def digits_samples(tmp_path_factory):
    """A short SGD run on DIGITS with resnet8 (10% noisy labels): samples 0..6, shared by tests."""
    save = tmp_path_factory.mktemp("digits_sgd")
    # In this interpreter: successful runs in a fresh one are in test_resume and test_distributed.
    assert run_here("train_sgd.py", "--datasets", "DIGITS", "--arch", "resnet8", "--epochs", 6,
                    "--lr", 0.1, "--batch-size", 64, "--save-dir", save, "--print-freq", 100,
                    "--randomseed", 3, "--device", "cpu", "--corrupt", 0.1) == 0
    return save
