"""CI's slow check, after pytest: the zoo's networks whose training steps can leave parameters
without gradient, found by asking each network (layers that drop branches at random, or a
meta-device forward that leaves parameters out), train under torchrun with 2 Gloo processes at
full size. The smallest network of each such family runs issue 24's command:

    torchrun --nproc_per_node 2 train_sgd.py --datasets DIGITS --arch ARCH --device cpu \
        --smalldatasets 0.3 --epochs 1

(tests/test_distributed.py runs narrow members of the same classes in seconds.)"""
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models  # noqa: E402
from dldr.distributed import drops_branches, unused_parameters  # noqa: E402


def leaves_parameters_unused(model):
    return drops_branches(model) or bool(unused_parameters(model, (2, 3, 32, 32)))


def main():
    found = {}
    for name in models.names():
        with torch.device("meta"):
            model = models.build(name, 10).train()
        if leaves_parameters_unused(model):
            size = sum(p.numel() for p in model.parameters())
            family = models.family(name)
            if family not in found or size < found[family][1]:
                found[family] = (name, size)
    print("networks that can leave parameters without gradient, the smallest of each family:",
          ", ".join(f"{n} ({s:,} parameters)" for n, s in found.values()), flush=True)
    assert {"stochasticdepth", "nasnet"} <= set(found), found
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, _ in found.values():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2", "train_sgd.py", "--datasets", "DIGITS", "--arch", name,
                   "--device", "cpu", "--smalldatasets", "0.3", "--epochs", "1", "--print-freq",
                   "100", "--save-dir", os.path.join(tmp, name)]
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            done = [line for line in out.stdout.splitlines() if line.startswith("=> SGD done")]
            print(f"{name}: exit {out.returncode}; {done[0] if done else 'not done'}", flush=True)
            if out.returncode != 0 or not done:
                print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
                sys.exit(1)
    print(f"zoo under torchrun: every one of the {len(found)} networks trained")


if __name__ == "__main__":
    main()
