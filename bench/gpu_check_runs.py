"""What the GPU check's stages (bench/gpu_check.py) run: the scripts in this process, their
records, a SIGTERM at a chosen step, and torch.compile's statistics."""
import contextlib
import functools
import importlib
import json
import logging
import math
import os
import signal
import statistics
import time


def synthetic(n_train, n_test):
    """--datasets SYNTHETIC at this size in this process (its loader's size options)."""
    from dldr import data
    data.DATASETS["SYNTHETIC"] = functools.partial(data.load_synthetic, n_train=n_train,
                                                   n_test=n_test)


def script(name, *argv):
    """Run ``name``.py's main(argv) in this process as its command line does; seconds taken."""
    import utils
    module = importlib.import_module(name)
    argv = [str(a) for a in argv]
    print(f"$ python {name}.py {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        utils.run_main(module.main, argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"{name}.py exited with {e.code}") from None
    return time.perf_counter() - start


def results(save_dir, name):
    with open(os.path.join(save_dir, f"results_{name}.json")) as f:
        return json.load(f)


def trained_rows(record):  # the start's row has no train_time
    return [r for r in record["epochs"] if "train_time" in r]


def make_samples(folder, argv, epochs):
    """A short SGD run (eager, fp32) whose samples 0..epochs the subspace stages start from."""
    script("train_sgd", *argv, "--epochs", epochs, "--lr", "0.1", "--milestones", "100",
           "--save-dir", folder)
    return folder


def step_time(record, n_train, batch):
    """Mean seconds per step of the trained epochs after the first (which absorbs compilation),
    or of the only one."""
    rows = trained_rows(record)
    rows = rows[1:] or rows
    return statistics.median(r["train_time"] for r in rows) / math.ceil(n_train / batch)


def state_difference(path_a, path_b):
    """(max |a - b| over the floating-point entries of two saved state dicts, bit-identical?)"""
    import torch
    from dldr.samples import load_state
    a, b = load_state(path_a), load_state(path_b)
    if a.keys() != b.keys():
        raise RuntimeError(f"{path_a} and {path_b} hold different entries")
    diff, equal = 0.0, True
    for k in a:
        x, y = a[k], b[k]
        equal = equal and torch.equal(x, y)
        if x.is_floating_point():
            diff = max(diff, (x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
    return diff, equal


class CompileWatch:
    """torch.compile's work during a run: graphs compiled, recompilations (and why), and CUDA
    graphs recorded, replayed and skipped (torch 2.x internals, read defensively)."""

    def __enter__(self):
        import torch
        from torch._dynamo.utils import counters
        counters.clear()
        self.reasons, self.patched = [], []
        torch._logging.set_logs(recompiles=True)  # each recompilation: one record, with its reason
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.reasons.append(record.getMessage())
        self.logger = logging.getLogger("torch._dynamo.guards.__recompiles")
        self.logger.addHandler(self.handler)
        # The CUDA graph trees' recordings, replays and eager (warm-up) runs, counted at the calls
        self.calls = {"record_function": 0, "execute_node": 0, "run_eager": 0}
        try:
            from torch._inductor.cudagraph_trees import CUDAGraphTreeManager as manager
            for name in self.calls:
                def counting(*args, _name=name, _original=getattr(manager, name), **kwargs):
                    self.calls[_name] += 1
                    return _original(*args, **kwargs)
                self.patched.append((manager, name, getattr(manager, name)))
                setattr(manager, name, counting)
        except (ImportError, AttributeError) as e:
            self.calls = {"error": repr(e)}
        return self

    def __exit__(self, *exc):
        for owner, name, original in self.patched:
            setattr(owner, name, original)
        self.logger.removeHandler(self.handler)

    def figures(self, gpu):
        from torch._dynamo.utils import counters
        out = {"graphs_compiled": counters["stats"]["unique_graphs"],
               "recompiles": len(self.reasons),
               "recompile_reasons": [" ".join(r.split("guard failure(s):")[-1].split())[:160]
                                     for r in self.reasons[:4]]}
        if gpu:
            out.update(cudagraph_skips=counters["inductor"]["cudagraph_skips"],
                       cudagraphs_recorded=self.calls.get("record_function"),
                       cudagraph_replays=self.calls.get("execute_node"),
                       cudagraph_eager_runs=self.calls.get("run_eager"),
                       cudagraphs_used=bool(self.calls.get("execute_node")))
        return out


@contextlib.contextmanager
def sigterm_during(epoch, batch):
    """SIGTERM to this process during the step on ``batch`` of ``epoch`` (a preemption): the run
    checkpoints that step and stops with exit status 143."""
    import dldr.progress
    update = dldr.progress.EpochProgress.update

    def signalled(progress, i, *args):
        if progress.epoch == epoch and i == batch:
            os.kill(os.getpid(), signal.SIGTERM)
        return update(progress, i, *args)

    dldr.progress.EpochProgress.update = signalled
    try:
        yield
    finally:
        dldr.progress.EpochProgress.update = update
