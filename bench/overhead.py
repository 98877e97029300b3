"""Per-step overhead of the scripts' training steps against a bare loop of the same maths.

For SGD, P-SGD, P-BFGS and TWA: the script's own ``train_epoch`` (as ``main`` calls it, with the
objects ``main`` builds: the run's EpochProgress meters and non-finite check, the GradScaler, the
step marker, FlatParameters, PBFGS) against the same maths written inline (forward, loss,
backward, the projection as P.T @ (P @ g), the optimizer step; for P-BFGS the step with its
Armijo line search as dldr/optim.PBFGS takes it). Same model (ResNet-20), same batches of
synthetic CIFAR-sized data (built once, on the device), same threads; each timed epoch starts
from the same weights, so both take the same steps (checked: the weights after the epoch must be
equal to the last bit). The rounds alternate which one goes first; the table gives each one's
fastest round (other jobs' load only adds time) and their ratio. Then torch.profiler over one
epoch of each: the wall time the script adds per step, how much of it is tensor operators' own
time (the rest is Python and the host), and the operators it calls more often than the bare loop.

    python bench/overhead.py                   # full size, by hand (~15 min on one CPU thread)
    python bench/overhead.py --tiny --json o.json      # toy size, seconds (the test suite)
"""
import argparse
import contextlib
import copy
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_pbfgs  # noqa: E402
import train_psgd  # noqa: E402
import train_sgd  # noqa: E402
import utils  # noqa: E402
from dldr.cli import UsageError, positive_int  # noqa: E402
from dldr.files import check_output_file, take_pending_signal  # noqa: E402

METHODS = ("sgd", "psgd", "pbfgs", "twa")
TITLES = {"sgd": "SGD", "psgd": "P-SGD", "pbfgs": "P-BFGS", "twa": "TWA"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="toy size: a few seconds in all")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated, of " + ", ".join(METHODS))
    p.add_argument("--batch-size", type=positive_int, help="SGD, P-SGD and TWA (default 128; tiny 8)")
    p.add_argument("--pbfgs-batch-size", type=positive_int, help="P-BFGS (default 1024; tiny 16)")
    p.add_argument("--steps", type=positive_int, help="steps per timed epoch (default 10; tiny 1)")
    p.add_argument("--pbfgs-steps", type=positive_int, help="P-BFGS steps per timed epoch (default 3; "
                                                   "tiny 2)")
    p.add_argument("--repeats", type=positive_int, help="timed rounds after a warm-up round (default 4; "
                                               "tiny 1)")
    p.add_argument("--k", type=positive_int, help="P-SGD and P-BFGS basis size (default 40; tiny 3)")
    p.add_argument("--twa-k", type=positive_int, help="TWA basis size, its samples (default 100; tiny 4)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's, which follows "
                                               "OMP_NUM_THREADS)")
    p.add_argument("--top", type=positive_int, default=8, help="profile entries shown per method")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.json:  # before minutes of timing, not after
        try:
            check_output_file(args.json, "--json")
        except UsageError as e:
            p.error(str(e))
    full = dict(batch_size=128, pbfgs_batch_size=1024, steps=10, pbfgs_steps=3, repeats=4, k=40,
                twa_k=100)
    tiny = dict(batch_size=8, pbfgs_batch_size=16, steps=1, pbfgs_steps=2, repeats=1, k=3,
                twa_k=4)
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {', '.join(sorted(unknown))}; use {', '.join(METHODS)}")
    return args


def make_batches(n_batches, batch_size, device):
    """The batches of a training epoch as the run's MemoryLoader makes them (shuffled, cropped,
    flipped, normalised), built once so that both loops see the same tensors."""
    data = utils.load_synthetic(True, n_train=n_batches * batch_size)
    loader = utils.MemoryLoader(data, batch_size, device, shuffle=True, seed=0)
    return list(loader)


# The bare loops: the maths of each method and nothing else

def bare_sgd(model, batches, opt):
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def bare_psgd(model, flat, P, batches, opt):
    model.train()
    g = flat.grad
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        g.zero_()
        loss.backward()
        g.copy_(P.T @ (P @ g))
        opt.step()


@torch.no_grad()
def bare_pbfgs(model, flat, P, batches, sigma=0.4, shrink=0.4, max_search=20, eps=1e-20):
    """PBFGS's step (alpha 0): gradient, H update, d = -H g_k, Armijo backtracking on the batch
    with the BatchNorm buffers put back after every try, w <- w0 + P^T s."""
    model.train()
    k = len(P)
    w, g = flat.data, flat.grad
    buffers = list(model.buffers())
    H, s_last, g_last = torch.eye(k, dtype=P.dtype), None, None
    for x, y in batches:
        w0 = w.clone()
        g.zero_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        gk = P @ g
        f0 = loss.item()
        saved = [b.clone() for b in buffers]
        if g_last is not None:
            yk = gk - g_last
            ys = torch.dot(yk, s_last)
            if ys > eps:
                rho = 1.0 / ys
                t = torch.eye(k, dtype=H.dtype) - rho * torch.outer(yk, s_last)
                H = t.T @ H @ t + rho * torch.outer(s_last, s_last)
        g_last = gk
        step = -(H @ gk)
        descent = torch.dot(gk, step).item()
        shrinks = 0
        while shrinks < max_search:
            w.copy_(torch.addmv(w0, P.T, step))
            trial = F.cross_entropy(model(x), y).item()
            for b, v in zip(buffers, saved):
                b.copy_(v)
            if trial < f0 + sigma * descent:
                break
            shrinks += 1
            descent *= shrink
            step = step * shrink
        s_last = step
        w.copy_(torch.addmv(w0, P.T, step))


class Method:
    """One method's model, batches and both epochs (``ours``, ``bare``), each from ``reset()``."""

    def __init__(self, name, args, device):
        self.name = name
        self.batch = args.pbfgs_batch_size if name == "pbfgs" else args.batch_size
        self.steps = args.pbfgs_steps if name == "pbfgs" else args.steps
        self.batches = make_batches(self.steps, self.batch, device)
        torch.manual_seed(0)
        self.model = utils.build_model("resnet20", "SYNTHETIC", 10, device)
        self.begin_step = utils.step_marker(device, False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        # What Run.after_step asks after every SGD step of a per-epoch run in one process
        plan = utils.SamplingPlan(batches=len(self.batches))
        self.after_step = lambda i: take_pending_signal() or plan.checkpoint_due(0, i)
        self.k = None
        if name != "sgd":
            self.flat = utils.FlatParameters(self.model)
            self.k = args.twa_k if name == "twa" else args.k
            self.P = utils.random_basis(self.flat.data.numel(), self.k, seed=0).to(
                device, torch.float32).contiguous()
        self.initial = copy.deepcopy(self.model.state_dict())
        self.sink = open(os.devnull, "w")  # the progress lines: formatted and written, unseen

    def reset(self):
        """The initial weights and buffers (copied into the same tensors: the flat views stay),
        a fresh optimizer; returns it."""
        self.model.load_state_dict(self.initial)
        if self.name == "sgd":  # train_sgd.main's
            return torch.optim.SGD(self.model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
        if self.name == "pbfgs":  # train_pbfgs.main's
            return utils.PBFGS(self.flat.params, self.P, buffers=self.model.buffers())
        lr, decay = (2.0, 1e-5) if self.name == "twa" else (1.0, 0.0)  # TWA's defaults, P-SGD's
        return torch.optim.SGD(self.flat.params, lr=lr, momentum=0.9, weight_decay=decay)

    def progress(self):
        """Run.progress's meters (train_sgd.py: no line at the last batch), default --print-freq."""
        return utils.EpochProgress(0, len(self.batches), 50, 0, print_last=self.name != "sgd")

    def run(self, label):
        """Seconds of one epoch of ``label`` ("ours" or "bare") from the initial state."""
        opt = self.reset()
        start = time.perf_counter()
        getattr(self, label)(opt)
        return time.perf_counter() - start

    def ours(self, opt):
        with contextlib.redirect_stdout(self.sink):
            if self.name == "sgd":
                train_sgd.train_epoch(self.model, self.batches, opt, self.scaler, self.progress(),
                                      None, self.begin_step, False, self.after_step)
            elif self.name == "pbfgs":
                train_pbfgs.train_epoch(self.model, self.flat, opt, self.batches, self.progress(),
                                        1, None, self.begin_step)
            else:
                train_psgd.train_epoch(self.model, self.flat, self.P, self.batches, opt,
                                       self.scaler, self.progress(), None, self.begin_step)

    def bare(self, opt):
        if self.name == "sgd":
            bare_sgd(self.model, self.batches, opt)
        elif self.name == "pbfgs":
            bare_pbfgs(self.model, self.flat, self.P, self.batches)
        else:
            bare_psgd(self.model, self.flat, self.P, self.batches, opt)

    def state(self):
        return {key: value.clone() for key, value in self.model.state_dict().items()}


def profile(method, label):
    """(wall seconds, {operator: (calls, own CPU microseconds)}) of one epoch of ``label`` under
    torch.profiler: the tensor operations, whichever Python line issued them."""
    opt = method.reset()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        getattr(method, label)(opt)
    wall = time.perf_counter() - start
    # Not torch.optim's "Optimizer.step#..." ranges: their own time is the Python run inside
    # them (the model's modules too), which the bare loop spends outside any range
    return wall, {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()
                  if not e.key.startswith("Optimizer.")}


def extra_entries(ours, bare, steps, top):
    """The operators the script calls more often than the bare loop, by their extra own time per
    step."""
    rows = []
    for key, (calls, own) in ours.items():
        bare_calls, bare_own = bare.get(key, (0, 0.0))
        if calls > bare_calls:
            rows.append(dict(entry=key, calls_per_step=(calls - bare_calls) / steps,
                             us_per_step=(own - bare_own) / steps))
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows[:top]


def bench(method, repeats, top):
    """Seconds per step of ours and bare (the fastest of the timed rounds: the load of other
    jobs only adds), their ratio, whether both leave the same weights, and the profile of the
    difference."""
    times = {"ours": [], "bare": []}
    # Warm-up round (allocator, first-call costs) that also checks the two are the same maths
    method.run("ours")
    after_ours = method.state()
    method.run("bare")
    after_bare = method.state()
    identical = all(torch.equal(after_ours[key], after_bare[key]) for key in after_ours)
    for r in range(repeats):
        order = ("ours", "bare") if r % 2 == 0 else ("bare", "ours")
        for label in order:
            times[label].append(method.run(label) / method.steps)
    (ours_wall, ours_ops), (bare_wall, bare_ops) = profile(method, "ours"), profile(method, "bare")
    ops_extra = sum(own for _, own in ours_ops.values()) - sum(own for _, own in bare_ops.values())
    ours_s, bare_s = min(times["ours"]), min(times["bare"])
    return dict(batch=method.batch, k=method.k, steps=method.steps, ours_s=ours_s, bare_s=bare_s,
                ratio=ours_s / bare_s, rounds=times, identical=identical,
                profiled_extra_us_per_step=(ours_wall - bare_wall) / method.steps * 1e6,
                ops_extra_us_per_step=ops_extra / method.steps,
                profile=extra_entries(ours_ops, bare_ops, method.steps, top))


def table(figures):
    lines = ["| method (batch, k) | steps x rounds | ours s/step | bare s/step | ours/bare | "
             "same weights |", "|---|---:|---:|---:|---:|---|"]
    for name, f in figures["methods"].items():
        k = f", k={f['k']}" if f["k"] else ""
        lines.append(f"| {TITLES[name]} ({f['batch']}{k}) | {f['steps']} x "
                     f"{len(f['rounds']['ours'])} | {f['ours_s']:.4f} | {f['bare_s']:.4f} | "
                     f"{f['ratio']:.3f} | {'yes' if f['identical'] else 'NO'} |")
    return "\n".join(lines)


def profile_lines(figures):
    lines = []
    for name, f in figures["methods"].items():
        lines.append(f"{TITLES[name]}: what the script's step adds over the bare loop "
                     f"(torch.profiler, one epoch each): {f['profiled_extra_us_per_step']:+.0f} "
                     f"us/step in all, of which operators' own time "
                     f"{f['ops_extra_us_per_step']:+.0f} us; the operators it calls more often:")
        for row in f["profile"]:
            lines.append(f"  {row['us_per_step']:9.1f} us  {row['calls_per_step']:6.1f} calls  "
                         f"{row['entry']}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        return measure(args)
    finally:  # a caller in the same process (the tests) keeps its threads, and so its digits
        torch.set_num_threads(threads)


def measure(args):
    device = torch.device("cpu")
    figures = {"machine": dict(cpu=platform.processor() or platform.machine(),
                               cores=os.cpu_count(), threads=torch.get_num_threads(),
                               omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                               torch=torch.__version__, tiny=args.tiny),
               "methods": {}}
    for name in args.methods:
        figures["methods"][name] = bench(Method(name, args, device), args.repeats, args.top)
    m = figures["machine"]
    print(f"ResNet-20, synthetic CIFAR-sized batches, {m['threads']} torch threads "
          f"(OMP_NUM_THREADS={m['omp_num_threads']}), {m['cores']} cores, torch {m['torch']}")
    print(table(figures))
    print()
    print(profile_lines(figures))
    if args.json:
        utils.atomic_write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
