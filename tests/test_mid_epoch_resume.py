"""Runs stopped inside an epoch for real, in fresh processes: SIGKILL of the whole launch (nothing
written at the kill: the run resumes from its last checkpoint, the last sample's) and SIGTERM
(to python, or to torchrun, which passes it to its workers: the run checkpoints the step it
stops at), then resumed by a new launch to the samples of the launch never stopped; one process
and two under torchrun (Gloo). The same in one interpreter: tests/test_step_sampling.py and
tests/test_distributed.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, descendants

# 160 images at batch 16: 10 steps an epoch, samples at steps 3, 6, ..., 60 (0.pt..20.pt); the
# stop comes in epoch 1, with 5 epochs to go: time enough for the test to send it on a busy machine
STEPS = ["--arch", "resnet8", "--device", "cpu", "--epochs", 6, "--batch-size", 16, "--lr", 0.05,
         "--print-freq", 1, "--sample-every-steps", 3, "--corrupt", 0.1, "--randomseed", 4]


def command(processes, folder, data_args, *extra):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable])
    return [*launcher, os.path.join(ROOT, "train_sgd.py"), *map(str, data_args), *map(str, STEPS),
            "--save-dir", str(folder), *extra]


def run(argv, stop=None, timeout=300):
    """Run ``argv``; with ``stop`` = (marker, signal), send the signal (SIGKILL: to every process
    of the launch at once, as a machine that dies; SIGTERM: to the launcher) once ``marker`` is
    printed. Returns the exit status and the output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env)
    out, deadline = [], time.time() + timeout
    for line in proc.stdout:
        out.append(line)
        if stop and stop[0] in line:
            if stop[1] == signal.SIGKILL:
                for pid in [proc.pid, *descendants(proc.pid)]:
                    os.kill(pid, signal.SIGKILL)
            else:
                proc.send_signal(stop[1])
            stop = None
        assert time.time() < deadline, "".join(out[-20:])
    proc.wait()
    return proc.returncode, "".join(out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_args):
    """The runs never stopped, by number of processes."""
    made = {}
    for processes in (1, 2):
        made[processes] = tmp_path_factory.mktemp(f"straight{processes}")
        code, out = run(command(processes, made[processes], data_args))
        assert code == 0, out[-3000:]
    return made


@pytest.mark.end_to_end  # ten launches (about 2 minutes): after the suite, in .ci/run
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stopped_inside_an_epoch_and_resumed_ends_with_the_same_samples(straight, tmp_path,
                                                                         data_args, processes,
                                                                         how):
    folder = tmp_path / "stopped"
    code, out = run(command(processes, folder, data_args), stop=("Epoch: [1][1/", how))
    stopped = json.loads((folder / "results_sgd.json").read_text())
    assert "final" not in stopped and stopped["samples"][-1]["step"] >= 9  # (sample 3: step 9)
    if how == signal.SIGKILL:  # where it died depends on how far it ran after the line
        assert code == -signal.SIGKILL, out[-2000:]
    else:  # the launcher's SIGTERM reaches every process: they stop at one step, checkpointed
        assert code != 0 and "stopped by SIGTERM during epoch " in out and \
            "batches of the next; resume with: " in out, out[-3000:]
    code, out = run(command(processes, folder, data_args, "--resume"))
    assert code == 0 and "=> resumed from " in out, out[-3000:]
    reference = straight[processes]
    names = sorted(p.name for p in reference.glob("*.pt") if p.stem.isdigit())
    assert names == sorted(p.name for p in folder.glob("*.pt") if p.stem.isdigit())
    assert len(names) == 21
    for name in names:
        assert (reference / name).read_bytes() == (folder / name).read_bytes(), name
    a, b = (json.loads((f / "results_sgd.json").read_text()) for f in (reference, folder))
    assert a["final"] == b["final"] and a["samples"] == b["samples"]
