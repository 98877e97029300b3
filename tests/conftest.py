import contextlib
import hashlib
import importlib
import os
import pickle
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dldr.kernels import pin_environment  # noqa: E402  (imports no torch)

# The AVX2 kernels on every x86-64 CPU unless DLDR_KERNELS=native: set before torch is imported,
# and inherited by the scripts the tests start (docs/speed.md)
pin_environment(os.environ.get("DLDR_KERNELS", "avx2"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REFERENCE = os.path.join(ROOT, "..", "shared", "reference", "model_param_counts.json")

# At most 2 threads (OMP_NUM_THREADS=1 gives 1); the scripts the tests start get the same number
torch.set_num_threads(min(2, torch.get_num_threads()))
THREADS = str(torch.get_num_threads())
# The seed of the shared DIGITS runs (digits_samples and the runs on it): the accuracy tests hold
# for any (checked by hand for 1-3 at 1 and 2 threads, pinned and native kernels: docs/speed.md)
SEED = os.environ.get("DLDR_TEST_SEED", "3")


def run_script(script, *args, timeout=600):
    """Run one of the three scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=THREADS)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def run_here(script, *args):
    """Exit status of ``python script args`` run through the script's own entry point in this
    interpreter: the same code path as run_script without a new interpreter's start-up (~4 s).
    The tests' thread count is run_script's subprocesses', so results match theirs bit for bit."""
    import utils
    module = importlib.import_module(script[:-3])
    try:
        utils.run_main(module.main, [str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


# The subspace runs on digits_samples: its data options, 5 directions from samples 0..6
DIGITS_SUB = ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--randomseed", SEED,
              "--corrupt", "0.1", "--params_start", "0", "--params_end", "7", "--n_components", "5",
              "--print-freq", "100"]
DIGITS_PBFGS = [*DIGITS_SUB, "--epochs", "2", "--batch-size", "128"]
@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """A small MNIST archive in torchvision's raw format (160 training, 40 test images of noise):
    quick data for the tests that check what the scripts do, not what they learn."""
    root = tmp_path_factory.mktemp("mnist") / "data"
    write_mnist(root, n_train=160, n_test=40)
    return str(root)


@pytest.fixture(scope="session")
def data_args(mnist_root):
    return ["--datasets", "MNIST", "--data-root", mnist_root, "--arch", "resnet8", "--device",
            "cpu"]


@pytest.fixture(scope="session")
def sgd_args(data_args):
    """A short SGD run (3 epochs of 10 batches) that the fault tests interrupt in several ways."""
    return [*data_args, "--epochs", "3", "--batch-size", "16", "--print-freq", "1", "--corrupt",
            "0.2", "--randomseed", "5", "--lr", "0.05"]


@pytest.fixture(scope="session")
def sgd_reference(tmp_path_factory, sgd_args):
    """sgd_args run undisturbed: samples 0..3 to compare interrupted and resumed runs with."""
    folder = tmp_path_factory.mktemp("undisturbed")
    assert run_here("train_sgd.py", *sgd_args, "--save-dir", folder) == 0
    return folder


@pytest.fixture(scope="session")
def digits_pbfgs(digits_samples):
    """P-BFGS (DIGITS_PBFGS) on digits_samples, as the authors' scripts run it: the folder."""
    assert run_here("train_pbfgs.py", *DIGITS_PBFGS, "--save-dir", digits_samples) == 0
    return digits_samples


@pytest.fixture(scope="session")
def digits_samples(tmp_path_factory):
    """A short SGD run on DIGITS with resnet8 (10% noisy labels): samples 0..6, shared by tests."""
    save = tmp_path_factory.mktemp("digits_sgd")
    # In this interpreter: successful runs in a fresh one are in test_resume and test_distributed.
    assert run_here("train_sgd.py", "--datasets", "DIGITS", "--arch", "resnet8", "--epochs", 6,
                    "--lr", 0.1, "--batch-size", 64, "--save-dir", save, "--print-freq", 100,
                    "--randomseed", SEED, "--device", "cpu", "--corrupt", 0.1) == 0
    return save


def write_cifar(root, cifar100, monkeypatch, n_train=50, n_test=20, seed=0):
    """A small archive in torchvision's CIFAR format under ``root``; torchvision's expected
    checksums are replaced by those of the files written here. Returns (train images (N, 3072)
    uint8, train labels)."""
    import torchvision
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes = 100 if cifar100 else 10
    label_key = "fine_labels" if cifar100 else "labels"
    written = {}

    def dump(name, obj):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)
        written[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()

    batches = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
    per = n_train // len(batches)
    all_x, all_y = [], []
    for name in batches:
        x = rng.integers(0, 256, (per, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, per).tolist()
        dump(name, {"data": x, label_key: y})
        all_x.append(x)
        all_y += y
    test_name = "test" if cifar100 else "test_batch"
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    dump(test_name, {"data": tx, label_key: rng.integers(0, classes, n_test).tolist()})
    meta_name, key = ("meta", "fine_label_names") if cifar100 else ("batches.meta", "label_names")
    dump(meta_name, {key: [f"class{i}" for i in range(classes)]})
    cls = torchvision.datasets.CIFAR100 if cifar100 else torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[b, written[b]] for b in batches])
    monkeypatch.setattr(cls, "test_list", [[test_name, written[test_name]]])
    monkeypatch.setattr(cls, "meta", {"filename": meta_name, "key": key, "md5": written[meta_name]})
    return np.concatenate(all_x), all_y


def write_mnist(root, n_train=40, n_test=12, seed=0):
    """A small archive in torchvision's raw MNIST format (idx files) under ``root``/MNIST/raw.
    Returns the training images (N, 28, 28) uint8 and labels."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], ">i4").tobytes() + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            np.array([2049, n], ">i4").tobytes() + labels.tobytes())
        out[split] = images, labels
    return out["train"]


def kernels_in_new_interpreter(env):
    """dldr.kernels.kernel_set() of a new interpreter started with ``env``: what a script started
    so records (the pin must be set before torch starts)."""
    import json
    code = "import json, dldr.kernels as k; print(json.dumps(k.kernel_set()))"
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                                     capture_output=True, text=True, timeout=120).stdout)


class Stopped(Exception):
    """Stands for the process dying (or Ctrl-C): raised from inside a training loop."""


def stop_training_at(monkeypatch, epoch, step):
    """Make the training loops of this interpreter raise Stopped at progress update ``step`` of
    epoch ``epoch`` or later in it, as a process dying there; ``monkeypatch.undo()`` lets them
    run again."""
    import dldr.progress
    update = dldr.progress.EpochProgress.update

    def stops(progress, i, *args):
        if progress.epoch == epoch and i >= step:
            raise Stopped
        return update(progress, i, *args)

    monkeypatch.setattr(dldr.progress.EpochProgress, "update", stops)


def descendants(pid):
    """The processes started by ``pid``, and theirs (torchrun's workers run in sessions of their
    own, so a process group does not hold them)."""
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def sigterm_during_step(epoch, batch, children=False):
    """Within it, a real SIGTERM to this process during the step on ``batch`` of ``epoch`` (the
    real signal path of run_main, as a cluster's preemption sends it); with ``children``, to the
    processes it started too (its DataLoader workers), as a terminal's Ctrl-C or a scheduler
    signals every process of the job."""
    import dldr.progress
    update = dldr.progress.EpochProgress.update

    def signalled(progress, i, *args):
        if progress.epoch == epoch and i == batch:
            for pid in descendants(os.getpid()) if children else []:
                os.kill(pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return update(progress, i, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dldr.progress.EpochProgress, "update", signalled)
        yield


class Exploit:
    """A pickle that runs ``touch MARKER`` when unpickled: a crafted checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
