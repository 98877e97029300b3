"""Where the time of a whole short run goes: a 1-epoch P-SGD and P-BFGS run, phase by phase.

A short subspace run is mostly not its training steps: the process starts (Python, torch), loads
the data, builds the model and the basis, evaluates the restart twice (the authors' way, then with
BatchNorm statistics re-estimated by a pass over the training set), trains, evaluates after the
epoch, and evaluates the final weights again. This bench makes SGD samples once (train_sgd.py, E
epochs), then for each method runs the script twice as subprocesses, as a user would:

1. plainly, timed from outside (time.perf_counter around the process): the whole process;
2. under ``python -m cProfile -o FILE``, whose profile is read with pstats and split into the
   phases below by the cumulative time of the functions that make them (PHASES says which).

The phases of the profiled process are disjoint and, with "other" (the rest of main: flags,
logs, bookkeeping), add up to its wall time. "start-up and exit" is the part outside the
profile (the interpreter's start, cProfile writing its file); "imports" is the profiled time
before main (the script's own ``import torch, utils``). A module imported lazily inside main is
counted in the phase that first needs it. The profiler adds a little per Python call: compare the
profiled process's wall time with the plain one (both printed).

    python bench/whole_run.py                  # DIGITS, ResNet-20, 6 SGD epochs (~2.5 min)
    python bench/whole_run.py --datasets SYNTHETIC --smalldatasets 0.1   # 5,000 CIFAR-sized images
    python bench/whole_run.py --datasets SYNTHETIC --smalldatasets 0.1 --sgd-epochs 2 \
        --psgd-batch-size 128 --pbfgs-batch-size 1024   # the scripts' own batches (issue 27's)
    python bench/whole_run.py --toy            # ResNet-8 on 10% of DIGITS: seconds (the test)
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = ("psgd", "pbfgs")
TITLES = {"psgd": "P-SGD", "pbfgs": "P-BFGS"}
SCRIPTS = {"psgd": "train_psgd.py", "pbfgs": "train_pbfgs.py"}

# The phases of the profiled process, in the order of a run, each as the functions whose
# cumulative time it is: (file, function name), or (file, function, caller's file, caller's
# function) for the time of the calls from that caller only. A file is under ROOT, or torch's
# ("torch/..."), or "SCRIPT": the method's script, run as __main__. None of these is called
# inside another one of the list (checked against the code; evaluations write no file, saves
# evaluate nothing), so the rows add up.
START = "start-up and exit (outside the profile)"
IMPORTS = "imports (before main)"
OTHER = "other (rest of main)"
START_EVAL = "start evaluation (test, BN, test)"
FINAL_EVAL = "final evaluation (BN, test, training loss)"
DIAGNOSTICS = "diagnostics (reach, stall)"
PHASES = [
    ("checks, sample fingerprints", [("dldr/subspace.py", "__init__")]),
    ("data loading", [("dldr/data.py", "load_data")]),
    ("model build", [("dldr/networks.py", "build_model")]),
    ("basis (samples read, PCA)", [("dldr/subspace.py", "build_basis")]),
    ("restart (sample, loaders)", [("dldr/subspace.py", "restart")]),
    # torch.optim's Optimizer.__init__ (P-SGD's SGD, P-BFGS's PBFGS) is the first call of a
    # function wrapped by torch._disable_dynamo, which imports torch._dynamo then
    ("optimizer construction", [("torch/optim/optimizer.py", "__init__")]),
    (START_EVAL, [("dldr/evaluation.py", "twice", "dldr/subspace.py", "training")]),
    ("training steps", [("SCRIPT", "train_epoch")]),
    ("per-epoch test evaluations", [("dldr/evaluation.py", "after_epoch")]),
    (DIAGNOSTICS, [("dldr/subspace.py", "trajectory_reach"),
                   ("dldr/stall.py", "stall_diagnostics")]),
    (FINAL_EVAL, [("dldr/evaluation.py", "twice", "dldr/run.py", "finish")]),
    # The start's and each epoch's checkpoint and results (Run._save), the final results and
    # model, and --overwrite's removal of the previous run's files
    ("files written", [("dldr/run.py", "_save"),
                       ("dldr/records.py", "save", "dldr/run.py", "finish"),
                       ("dldr/samples.py", "save_model", "dldr/run.py", "finish"),
                       ("dldr/run.py", "remove_outputs")]),
]
# Functions that need not appear in a profile (remove_outputs: no earlier run's file to remove)
OPTIONAL = {("dldr/run.py", "remove_outputs")}
# Inside the two evaluations: each one re-estimates BatchNorm once (one pass over the training
# set); pstats cannot tell which call was which, so each gets the mean of the passes
BN = ("dldr/batchnorm.py", "reestimate_bn")
BN_IN = {START_EVAL, FINAL_EVAL}
BN_ROW = "  of which BN re-estimation"
# What the authors' scripts do not do: judge the restart, judge the final weights with
# re-estimated statistics (their reading is the last epoch's test), the diagnostics
EXTRAS = (START_EVAL, FINAL_EVAL, DIAGNOSTICS)
ROWS = [START, IMPORTS, *(name for name, _ in PHASES), OTHER]
# Not a row of its own: the modules main imports on first use, inside the rows they happen in
LAZY = "(imports inside main, in the rows above)"
# Every import runs through importlib's _find_and_load: its cumulative time (the outermost
# calls only) is the time of all imports of the process
FIND_AND_LOAD = ("<frozen importlib._bootstrap>", "_find_and_load")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toy", action="store_true",
                   help="toy size: 2 SGD epochs of ResNet-8 on 10%% of DIGITS (the test)")
    p.add_argument("--datasets", default="DIGITS", help="DIGITS (default) or SYNTHETIC, ...")
    p.add_argument("--smalldatasets", help="share of the training set, passed to every script "
                                           "(SYNTHETIC 0.1: 5,000 CIFAR-sized images; toy: 0.1)")
    p.add_argument("--arch", help="default resnet20 (toy: resnet8)")
    p.add_argument("--sgd-epochs", type=int, help="SGD epochs E (default 6; toy 2): P-SGD and "
                                                  "P-BFGS use samples 0..E//2, E//2 directions")
    p.add_argument("--psgd-batch-size", type=int, default=64,
                   help="P-SGD's batch (default 64, digits.sh's; the script's own default: 128)")
    p.add_argument("--pbfgs-batch-size", type=int, default=128,
                   help="P-BFGS's batch (default 128, digits.sh's; the script's own: 1024)")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the runs (default: as this "
                                               "process's environment)")
    p.add_argument("--samples", help="folder of the SGD samples: made there unless its E.pt "
                                     "exists (default: a temporary folder); the bench's runs "
                                     f"write their files there under --output-tag {TAG} (the "
                                     "last bench's replaced), no other run's file is touched")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    defaults = dict(arch="resnet8", sgd_epochs=2, smalldatasets="0.1") if args.toy else \
        dict(arch="resnet20", sgd_epochs=6)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sgd_epochs < 2:
        p.error("--sgd-epochs: at least 2 (samples 0..E//2 must span E//2 >= 1 directions)")
    return args


def environment(args):
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_process(command, env, what):
    """Seconds of ``command`` (a subprocess in ROOT, its output captured); exits with its last
    lines if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        sys.exit(f"error: {what} failed (exit status {done.returncode}):\n{tail}")
    return seconds


def data_arguments(args):
    extra = ["--smalldatasets", str(args.smalldatasets)] if args.smalldatasets else []
    return ["--datasets", args.datasets, "--arch", args.arch, "--device", "cpu",
            "--randomseed", "1", *extra]


def make_samples(args, folder, env):
    """Seconds of the SGD run that writes samples 0..E in ``folder``, or None when they are
    there already."""
    if os.path.isfile(os.path.join(folder, f"{args.sgd_epochs}.pt")):
        return None
    command = [sys.executable, os.path.join(ROOT, "train_sgd.py"), *data_arguments(args),
               "--epochs", str(args.sgd_epochs), "--lr", "0.1", "--batch-size", "64",
               "--save-dir", folder]
    return run_process(command, env, "train_sgd.py (the samples)")


# The bench's runs' --output-tag: in a folder of the user's (--samples), their files never
# replace another run's; --overwrite replaces the previous bench's
TAG = "whole_run"


def method_arguments(method, args, folder):
    half = args.sgd_epochs // 2
    common = [*data_arguments(args), "--save-dir", folder, "--params_start", "0",
              "--params_end", str(half + 1), "--n_components", str(half), "--epochs", "1",
              "--output-tag", TAG, "--overwrite"]
    if method == "psgd":
        return [*common, "--lr", "1", "--batch-size", str(args.psgd_batch_size)]
    return [*common, "--batch-size", str(args.pbfgs_batch_size)]


def site_packages():
    """The folder that holds torch (found without importing it)."""
    return os.path.dirname(os.path.dirname(importlib.util.find_spec("torch").origin))


class Profile:
    """A cProfile file read with pstats: cumulative seconds of functions, by file (the script's
    "SCRIPT", under ROOT, torch's "torch/...", or importlib's frozen name) and name."""

    def __init__(self, path, script):
        stats = pstats.Stats(path)
        self.stats, self.total, self.script = stats.stats, stats.total_tt, script
        self.site = site_packages()
        self.by_name = {}
        for k in self.stats:
            where = k[0] if k[0].startswith("<") else os.path.realpath(k[0])
            self.by_name.setdefault((where, k[2]), []).append(k)

    def path(self, file):
        if file == "SCRIPT":
            return os.path.realpath(self.script)
        if file.startswith("<"):
            return file
        return os.path.realpath(os.path.join(self.site if file.startswith("torch/") else ROOT,
                                             file))

    def key(self, file, name, required=True):
        keys = self.by_name.get((self.path(file), name), [])
        if len(keys) > 1 or (required and not keys):
            raise SystemExit(f"error: {len(keys)} functions {name} of {file} in the profile, "
                             "expected one: has the code changed? (bench/whole_run.py PHASES)")
        return keys[0] if keys else None

    def cumulative(self, file, name, caller_file=None, caller=None, required=True):
        """Seconds in ``name`` and what it calls; with ``caller``, in its calls from that one."""
        key = self.key(file, name, required)
        if key is None:
            return 0.0
        if caller is None:
            return self.stats[key][3]
        edge = self.stats[key][4].get(self.key(caller_file, caller))
        if edge is None and required:
            raise SystemExit(f"error: {caller} of {caller_file} never calls {name} of {file} in "
                             "the profile: has the code changed? (bench/whole_run.py PHASES)")
        return edge[3] if edge else 0.0

    def calls(self, file, name):
        return self.stats[self.key(file, name)][1]


def phases(profile, wall):
    """{row: seconds} of a profiled process that took ``wall`` seconds, adding up to it."""
    seconds = {START: wall - profile.total,
               IMPORTS: profile.total - profile.cumulative("dldr/entry.py", "run_main")}
    for name, functions in PHASES:
        seconds[name] = sum(profile.cumulative(*f, required=f[:2] not in OPTIONAL)
                            for f in functions)
    seconds[OTHER] = wall - sum(seconds.values())
    bn_pass = profile.cumulative(*BN) / profile.calls(*BN)
    lazy = max(0.0, profile.cumulative(*FIND_AND_LOAD) - seconds[IMPORTS])
    return seconds, bn_pass, lazy


def authors_part(f):
    """Seconds of a profiled run less what the authors' scripts do not do (EXTRAS): the same run
    as theirs, on this code's steps (bench/overhead.py: within noise of a bare loop)."""
    return f["profiled_s"] - sum(f["phases"][row] for row in EXTRAS)


def measure_method(method, args, folder, env):
    script = os.path.join(ROOT, SCRIPTS[method])
    arguments = method_arguments(method, args, folder)
    whole = run_process([sys.executable, script, *arguments], env, SCRIPTS[method])
    with tempfile.TemporaryDirectory(prefix="whole_run_profile_") as scratch:  # none left behind
        profile_path = os.path.join(scratch, f"{method}.prof")
        profiled = run_process([sys.executable, "-m", "cProfile", "-o", profile_path, script,
                                *arguments], env, f"{SCRIPTS[method]} under cProfile")
        profile = Profile(profile_path, script)
    seconds, bn_pass, lazy = phases(profile, profiled)
    return dict(whole_s=whole, profiled_s=profiled, phases=seconds, bn_pass_s=bn_pass,
                lazy_imports_s=lazy)


def table(figures):
    """The markdown table: a column pair (seconds, share of the profiled process) per method.
    The rows in parentheses are parts of the rows above them, not added again."""
    methods = list(figures["methods"].values())
    lines = ["| phase | " + " | ".join(f"{TITLES[m]} s | share" for m in figures["methods"])
             + " |", "|---|" + "---:|---:|" * len(methods)]

    def row(label, seconds, part=False, share=True):
        cells = []
        for f, s in zip(methods, seconds):
            cells += [f"{s:.2f}", f"{100 * s / f['profiled_s']:.1f}%" if share else ""]
        if part:
            cells = [f"({c})" if c else c for c in cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for phase in ROWS:
        row(phase, [f["phases"][phase] for f in methods])
        if phase in BN_IN:
            row(BN_ROW, [f["bn_pass_s"] for f in methods], part=True)
    row(LAZY, [f["lazy_imports_s"] for f in methods], part=True)
    row("**profiled process**", [f["profiled_s"] for f in methods])
    row("**whole process, not profiled**", [f["whole_s"] for f in methods], share=False)
    row("the authors' part: the profiled process less " + ", ".join(EXTRAS),
        [authors_part(f) for f in methods])
    ratios = ", ".join(f"{TITLES[m]} {f['profiled_s'] / authors_part(f):.2f}x"
                       for m, f in figures["methods"].items())
    return "\n".join(lines) + f"\n\nprofiled process / the authors' part: {ratios}"


def machine(args):
    omp = (str(args.threads) if args.threads else os.environ.get("OMP_NUM_THREADS")) or \
        "unset (torch's default: one thread per physical core)"
    return dict(cores=os.cpu_count(), cpu=platform.processor() or platform.machine(),
                torch=importlib.metadata.version("torch"), python=platform.python_version(),
                omp_num_threads=omp)


def main(argv=None):
    args = parse_args(argv)
    env = environment(args)
    temporary = None
    if args.samples:
        folder = os.path.abspath(args.samples)
    else:
        folder = temporary = tempfile.mkdtemp(prefix="whole_run_")
    try:
        sgd_s = make_samples(args, folder, env)
        figures = dict(machine=machine(args), datasets=args.datasets,
                       smalldatasets=args.smalldatasets, arch=args.arch,
                       sgd_epochs=args.sgd_epochs, sgd_s=sgd_s, methods={})
        for method in METHODS:
            figures["methods"][method] = measure_method(method, args, folder, env)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(temporary, ignore_errors=True)
    m = figures["machine"]
    size = f", --smalldatasets {args.smalldatasets}" if args.smalldatasets else ""
    half = args.sgd_epochs // 2
    print(f"One epoch of P-SGD (batch {args.psgd_batch_size}) and P-BFGS (batch "
          f"{args.pbfgs_batch_size}), {args.arch} on "
          f"{args.datasets}{size}, basis of {half} directions from SGD samples 0..{half}")
    print(f"machine: {m['cores']} cores ({m['cpu']}), torch {m['torch']}, python {m['python']}, "
          f"OMP_NUM_THREADS={m['omp_num_threads']}")
    print("SGD samples: " + (f"{args.sgd_epochs} epochs in {sgd_s:.1f} s" if sgd_s is not None
                             else f"reused from {folder}"))
    print(table(figures))
    if temporary and args.keep:
        print(f"kept: {temporary}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main()
