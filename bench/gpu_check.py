"""The GPU check in stages (BENCHMARKS.md lists them): `bash bench/gpu_check.sh` on one CUDA GPU
(its budgets: under 8 minutes), `--cpu` the same at toy sizes on the CPU, `--stages a,b` some.

Each stage runs in a child process with its own time budget; as soon as it ends, one JSON line
{"stage", "status": "ok"|"failed"|"skipped", "seconds", "budget_s", "mode", ...figures} is appended
to $OUT/gpu_check.jsonl (default OUT: bench/out). A stage that crashes or runs past its budget is
"failed" with the last lines of its stderr as "reason" and the figures it recorded until then; the
next one starts. A markdown table ends the run ($OUT/gpu_check.md); logs in $OUT/gpu_check_logs/,
the runs' files in a temporary folder. GPU_CHECK_EXERCISE=1 with --cpu runs the agreement stage too,
CPU against CPU, to try its code.
"""
import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dldr.cli import UsageError, positive_number  # noqa: E402
from dldr.files import atomic_write, atomic_write_json, check_writable_dir  # noqa: E402

GPU_BUDGET_S, CPU_BUDGET_S = 450, 450  # the sums of the budgets of the stages that run


class Stage(collections.namedtuple("Stage", "name gpu_s cpu_s run gpu_only")):
    def budget(self, cpu, scale=1.0):
        return (self.cpu_s if cpu else self.gpu_s) * scale


STAGES, GRACE_S = [], 3  # a stage past its budget less GRACE_S gets SIGTERM, then SIGKILL


def stage(gpu_s, cpu_s, gpu_only=None):
    """Register a stage with its budgets in seconds on one GPU and at toy sizes on the CPU;
    ``gpu_only``: why it is skipped with --cpu."""
    def register(run):
        STAGES.append(Stage(run.__name__, gpu_s, cpu_s, run, gpu_only))
        return run
    return register


class Context:
    """What a stage's child knows: the mode, its scratch folder; it records figures as it goes
    (rewritten after each, so a stage killed later still reports them)."""

    def __init__(self, cpu, work, figures_path):
        self.cpu, self.gpu, self.device, self.work = cpu, not cpu, "cpu" if cpu else "cuda", work
        self.path, self.figures, self.skipped = figures_path, {}, {}

    def record(self, **figures):
        self.figures.update(figures)
        self._save()

    def skip_part(self, part, reason):
        self.skipped[part] = reason
        self._save()

    def _save(self):
        atomic_write_json(self.path, {"figures": self.figures, "skipped_parts": self.skipped})

    def dir(self, name):
        path = os.path.join(self.work, name)
        os.makedirs(path, exist_ok=True)
        return path


from gpu_check_runs import (CompileWatch, make_samples, results, script,  # noqa: E402
                            sigterm_during, state_difference, step_time, synthetic, trained_rows)


# ----------------------------------------------------------------------------------------- stages
@stage(gpu_s=15, cpu_s=25)
def identity(ctx):
    """Versions of Python, torch, CUDA, cuDNN; the GPU and its driver (nvidia-smi)."""
    import platform
    import torch
    ctx.record(python=platform.python_version(), torch=torch.__version__,
               cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    if ctx.cpu:
        ctx.skip_part("gpu", "--cpu: no GPU asked for")
        return
    props = torch.cuda.get_device_properties(0)
    ctx.record(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
               capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
               bf16=torch.cuda.is_bf16_supported())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        rows = smi.stdout.strip().splitlines()  # name, memory, driver: one row per GPU
        ctx.record(nvidia_smi=rows, driver=rows[0].split(",")[-1].strip() if rows else None)
    except (OSError, subprocess.SubprocessError) as e:
        ctx.skip_part("nvidia_smi", repr(e))


@stage(gpu_s=100, cpu_s=70)
def sgd_epoch(ctx):
    """Two SGD epochs of ResNet-20 three ways; the second epoch's images/s (the first absorbs
    compilation), and what torch.compile did."""
    n_train, n_test, arch = (12800, 2048, "resnet20") if ctx.gpu else (256, 128, "resnet8")
    synthetic(n_train, n_test)
    common = ["--datasets", "SYNTHETIC", "--arch", arch, "--device", ctx.device, "--epochs", 2,
              "--batch-size", 128, "--print-freq", 10 ** 6, "--milestones", 100]
    compiled = ("memory_bf16_compiled", ["--amp", "bf16", "--compile"])
    if ctx.cpu:  # bf16 is slow on most CPUs and inductor's C++ compilation takes minutes there:
        compiled = ("memory_fp32_compiled", ["--compile", "--compile-backend", "aot_eager"])
        ctx.skip_part("bf16_inductor", "--cpu: fp32 and the aot_eager backend (dynamo, autograd)")
        ctx.skip_part("cuda_graphs", "--cpu: CUDA graphs need a GPU")
    ctx.record(images=n_train, arch=arch)
    for way, extra in (("dataloader_fp32", ["--loader", "dataloader", "-j", 8 if ctx.gpu else 0]),
                       ("memory_fp32", []), compiled):
        folder = ctx.dir(way)
        if way.endswith("compiled"):
            with CompileWatch() as watch:
                wall = script("train_sgd", *common, *extra, "--save-dir", folder)
            ctx.record(**{f"{way}_{k}": v for k, v in watch.figures(ctx.gpu).items()})
        else:
            wall = script("train_sgd", *common, *extra, "--save-dir", folder)
        first, last = trained_rows(results(folder, "sgd"))
        ctx.record(**{f"{way}_images_per_s": round(last["images_per_s"]),
                      f"{way}_epoch_s": last["train_time"],
                      f"{way}_first_epoch_s": first["train_time"], f"{way}_wall_s": wall})


def _subspace_step(ctx, method, batch):
    n_train, n_test, arch = (16384, 1024, "resnet20") if ctx.gpu else (256, 128, "resnet8")
    synthetic(n_train, n_test)
    data = ["--datasets", "SYNTHETIC", "--arch", arch, "--device", ctx.device,
            "--print-freq", 10 ** 6]
    folder = make_samples(ctx.dir("samples"), [*data, "--batch-size", 128], 3)
    sub = [*data, "--params_start", 0, "--params_end", 4, "--n_components", 3, "--batch-size",
           batch, "--epochs", 3 if ctx.gpu else 2, "--save-dir", folder]
    if method == "psgd":
        sub += ["--lr", 1, "--milestones", 100]
    ctx.record(images=n_train, arch=arch, batch=batch)
    # eager first (fp32 on the CPU, bf16 on the GPU), then compiled: the slow compilation last
    ways = [("eager", ["--amp", "bf16"] if ctx.gpu else [])]
    if ctx.gpu:
        ways.append(("compiled", ["--amp", "bf16", "--compile"]))
    else:
        ctx.skip_part("compiled", "--cpu: compiled subspace steps are timed on the GPU only")
    for way, extra in ways:
        wall = script(f"train_{method}", *sub, *extra, "--output-tag", way)
        record = results(folder, f"{method}_{way}")
        ctx.record(**{f"{way}_step_s": step_time(record, n_train, batch), f"{way}_wall_s": wall,
                      f"{way}_first_epoch_s": trained_rows(record)[0]["train_time"]})
        if method == "pbfgs":
            ctx.record(**{f"{way}_mean_shrinks": trained_rows(record)[-1].get("mean_shrinks")})


@stage(gpu_s=65, cpu_s=50)
def pbfgs_step(ctx):
    """Mean P-BFGS step (batch 1024, line search included) in a 3-dimensional subspace."""
    _subspace_step(ctx, "pbfgs", 1024)


@stage(gpu_s=50, cpu_s=50)
def psgd_step(ctx):
    """Mean P-SGD step (batch 128) in a 3-dimensional subspace."""
    _subspace_step(ctx, "psgd", 128)


@stage(gpu_s=15, cpu_s=35)
def basis(ctx):
    """utils.subspace_basis on the device against scikit-learn's PCA on the same samples (a
    random walk with shrinking steps, like a trajectory): times and direction by direction."""
    import torch
    from sklearn.decomposition import PCA
    import models
    import utils
    arch, n, k = ("resnet20", 81, 40) if ctx.gpu else ("resnet8", 21, 10)
    dim = sum(p.numel() for p in models.build(arch, 10).parameters())
    g = torch.Generator().manual_seed(0)
    samples = (torch.randn(n, dim, generator=g) * torch.linspace(1, 0.05, n)[:, None]).cumsum(0)
    ctx.record(samples=n, components=k, dim=dim)
    ours = []
    sync = torch.cuda.synchronize if ctx.gpu else (lambda: None)
    for _ in range(3):  # the first includes the device's warm-up
        sync()
        start = time.perf_counter()
        b, _ = utils.subspace_basis(samples.to(ctx.device), k)
        sync()
        ours.append(time.perf_counter() - start)
    start = time.perf_counter()
    PCA(n_components=k).fit(samples.numpy())  # scikit-learn's default solver, as a user calls it
    sklearn_s = time.perf_counter() - start
    ref = torch.from_numpy(PCA(n_components=k, svd_solver="full")
                           .fit(samples.double().numpy()).components_)
    cos = (b.double().cpu() * ref).sum(1).abs() / (b.double().cpu().norm(dim=1) * ref.norm(dim=1))
    ctx.record(ours_s=statistics.median(ours), ours_first_s=ours[0], sklearn_pca_s=sklearn_s,
               min_abs_cosine=cos.min().item(), max_1_minus_abs_cosine=(1 - cos).max().item())
    if cos.min() < 0.999:
        raise RuntimeError(f"direction {int(cos.argmin())} disagrees with scikit-learn's: |cos| "
                           f"{cos.min().item():.6f}")


@stage(gpu_s=35, cpu_s=90, gpu_only="--cpu: GPU-vs-CPU agreement needs a GPU")
def agreement(ctx):
    """float64 SGD, P-BFGS and P-SGD on the GPU against the same on the CPU (ResNet-8, DIGITS,
    a few steps): final parameters and losses. The subspace runs of both start from the CPU's
    samples, so each method's difference is its own."""
    data = ["--datasets", "DIGITS", "--arch", "resnet8", "--smalldatasets", 0.05, "--dtype",
            "float64", "--print-freq", 10 ** 6, "--randomseed", 2]
    sub = [*data, "--params_start", 0, "--params_end", 3, "--n_components", 2, "--epochs", 1]
    runs = {}
    for device in ("cpu", ctx.device):
        side = "cpu" if device == "cpu" and "cpu" not in runs else "device"
        sgd = ctx.dir(f"{side}_sgd")
        make_samples(sgd, [*data, "--device", device, "--batch-size", 32], 2)
        runs[side] = {"sgd": (sgd, "2.pt", "sgd")}
        for method, extra in (("pbfgs", ["--batch-size", 64]),
                              ("psgd", ["--batch-size", 32, "--lr", 1, "--milestones", 100])):
            folder = ctx.dir(f"{side}_{method}")
            for i in range(3):  # the CPU run's samples and record, so both start alike
                shutil.copy(os.path.join(runs["cpu"]["sgd"][0], f"{i}.pt"), folder)
            shutil.copy(os.path.join(runs["cpu"]["sgd"][0], "run.json"), folder)
            script(f"train_{method}", *sub, *extra, "--device", device, "--save-dir", folder)
            runs[side][method] = (folder, f"{method.upper()}.pt", method)
    for method in ("sgd", "pbfgs", "psgd"):
        (a_dir, model, name), (b_dir, _, _) = runs["cpu"][method], runs["device"][method]
        diff, equal = state_difference(os.path.join(a_dir, model), os.path.join(b_dir, model))
        rows_a, rows_b = results(a_dir, name)["epochs"], results(b_dir, name)["epochs"]
        loss = max(abs(x[key] - y[key]) for x, y in zip(rows_a, rows_b)
                   for key in ("train_loss", "test_loss") if key in x)
        ctx.record(**{f"{method}_max_param_diff": diff, f"{method}_max_loss_diff": loss,
                      f"{method}_bit_identical": equal})


@stage(gpu_s=25, cpu_s=50)
def resume(ctx):
    """--deterministic, a sample every few steps: 2 epochs straight against a run stopped by
    SIGTERM inside epoch 1, then --resume'd there; every sample must be the same."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    n_train, n_test, arch = (4096, 1024, "resnet20") if ctx.gpu else (256, 128, "resnet8")
    synthetic(n_train, n_test)
    every, batch = (8, 5) if ctx.gpu else (1, 0)  # 32 steps an epoch on the GPU, 2 on the CPU
    common = ["--datasets", "SYNTHETIC", "--arch", arch, "--device", ctx.device,
              "--deterministic", "--batch-size", 128, "--print-freq", 10 ** 6, "--milestones", 1,
              "--epochs", 2, "--sample-every-steps", every]
    straight, stopped = ctx.dir("straight"), ctx.dir("resumed")
    script("train_sgd", *common, "--save-dir", straight)
    with sigterm_during(1, batch):
        try:
            script("train_sgd", *common, "--save-dir", stopped)
            raise RuntimeError("the run was not stopped by its SIGTERM")
        except RuntimeError as e:
            if "exited with 143" not in str(e):
                raise
    script("train_sgd", *common, "--resume", "--save-dir", stopped)
    samples = sorted(int(n[:-3]) for n in os.listdir(straight) if n[:-3].isdigit())
    worst, equal = 0.0, True
    for k in samples:
        diff, same = state_difference(os.path.join(straight, f"{k}.pt"),
                                      os.path.join(stopped, f"{k}.pt"))
        worst, equal = max(worst, diff), equal and same
    ctx.record(arch=arch, images=n_train, samples=len(samples), stopped_at=f"epoch 1, batch {batch}",
               max_param_diff=worst, equal=equal)
    if not equal:
        raise RuntimeError(f"the resumed run's samples differ from the straight run's by {worst:.3g}")


@stage(gpu_s=30, cpu_s=70)
def torchrun(ctx):
    """train_sgd.py for 1 epoch under torchrun: NCCL with 1 process (and 2 where there are 2
    GPUs); with --cpu Gloo with 2 processes."""
    import torch
    counts = [2] if ctx.cpu else [1, 2] if torch.cuda.device_count() >= 2 else [1]
    if counts == [1]:
        ctx.skip_part("nccl_2", "one GPU only")
    for n in counts:
        folder = ctx.dir(f"torchrun_{n}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(n), os.path.join(ROOT, "train_sgd.py"), "--datasets", "DIGITS", "--arch",
               "resnet8", "--epochs", "1", "--batch-size", "64", "--smalldatasets", "0.5",
               "--device", ctx.device, "--print-freq", "1000000", "--save-dir", folder]
        print("$", " ".join(cmd), flush=True)
        start = time.perf_counter()
        log = os.path.join(os.path.dirname(ctx.path), f"torchrun_{n}_processes.log")
        with open(log, "w") as f:
            code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                  env=dict(os.environ, OMP_NUM_THREADS="1")).returncode
        if code:  # the lines that say why, from its log
            why = [ln.strip() for ln in open(log, errors="replace") if "rror" in ln
                   or "terminate" in ln or "exitcode" in ln][-4:]
            raise RuntimeError(f"torchrun, {n} processes: exit status {code}: {' / '.join(why)}")
        acc, name = results(folder, "sgd")["epochs"][-1]["test_acc"], "gloo" if ctx.cpu else "nccl"
        ctx.record(**{f"{name}_{n}_s": time.perf_counter() - start, f"{name}_{n}_test_acc": acc})


@stage(gpu_s=20, cpu_s=20, gpu_only="--cpu: peak GPU memory needs a GPU")
def peak_memory(ctx):
    """Peak GPU memory of P-BFGS (ResNet-20, batch 1024, bf16, 10 directions)."""
    import torch
    n_train = 4096
    synthetic(n_train, 1024)
    data = ["--datasets", "SYNTHETIC", "--arch", "resnet20", "--device", ctx.device,
            "--print-freq", 10 ** 6]
    folder = make_samples(ctx.dir("samples"), [*data, "--batch-size", 128], 10)
    torch.cuda.reset_peak_memory_stats()
    script("train_pbfgs", *data, "--params_end", 11, "--n_components", 10, "--batch-size", 1024,
           "--epochs", 1, "--amp", "bf16", "--save-dir", folder)
    measured = torch.cuda.max_memory_allocated()
    recorded = results(folder, "pbfgs").get("peak_memory_bytes")  # the run's own figure, if any
    ctx.record(peak_memory_bytes=recorded if recorded is not None else measured,
               source="results_pbfgs.json" if recorded is not None else "measured in-process",
               measured_in_process_bytes=measured)


@stage(gpu_s=95, cpu_s=100)
def pipeline(ctx):
    """A short pipeline timed step by step: 30 SGD epochs (LR drop at 20; on the GPU bf16 and
    compiled), the basis of samples 0..20, P-BFGS, P-SGD, TWA, SWA (bf16, eager)."""
    n_train, n_test, arch = (10240, 2048, "resnet20") if ctx.gpu else (128, 64, "resnet8")
    synthetic(n_train, n_test)
    data = ["--datasets", "SYNTHETIC", "--arch", arch, "--device", ctx.device,
            "--print-freq", 10 ** 6]
    fast = ["--amp", "bf16"] if ctx.gpu else []
    folder = ctx.dir("pipeline")
    ctx.record(arch=arch, images=n_train)
    sub = [*data, *fast, "--params_start", 0, "--params_end", 21, "--save-dir", folder]
    steps = [("sgd", "train_sgd", [*data, *fast, *(["--compile"] if ctx.gpu else []),
                                   "--epochs", 30, "--lr", 0.1, "--milestones", 20,
                                   "--batch-size", 128 if ctx.gpu else 64,
                                   "--save-dir", folder]),
             ("pbfgs", "train_pbfgs", [*sub, "--n_components", 10, "--epochs", 3,
                                       "--batch-size", 1024]),
             ("psgd", "train_psgd", [*sub, "--n_components", 10, "--epochs", 5, "--lr", 1,
                                     "--milestones", "3,4", "--batch-size", 128]),
             ("twa", "train_twa", [*sub, "--epochs", 3, "--batch-size", 128]),
             ("swa", "swa", [*data, "--params_start", 0, "--params_end", 21,
                             "--save-dir", folder])]
    for name, module, argv in steps:
        seconds = script(module, *argv)
        final = results(folder, name).get("final") or {}
        ctx.record(**{f"{name}_s": seconds, f"{name}_test_acc": final.get("test_acc")})
    ctx.record(total_s=sum(ctx.figures[f"{name}_s"] for name, _, _ in steps))


# --------------------------------------------------------------------------------------- the parent
def check_budgets():
    for cpu, limit in ((False, GPU_BUDGET_S), (True, CPU_BUDGET_S)):
        total = sum(s.budget(cpu) for s in STAGES if not (cpu and s.gpu_only))
        if total > limit:
            raise AssertionError(f"stage budgets sum to {total} s, over {limit} s")


def tail(path, lines=6):
    try:
        with open(path, errors="replace") as f:
            text = [ln.rstrip() for ln in f.read()[-20000:].splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-1000:]


def child_command(stage_, cpu, figures, work):
    return [sys.executable, os.path.abspath(__file__), "--child", stage_.name, "--figures", figures,
            "--work", work] + (["--cpu"] if cpu else [])


def run_stage(stage_, args, logs, work):
    """One stage in a child process with its budget; its JSON line's fields."""
    budget = stage_.budget(args.cpu, args.budget_scale)
    line = {"stage": stage_.name, "status": None, "seconds": 0.0, "budget_s": budget,
            "mode": "cpu" if args.cpu else "gpu"}
    exercise = os.environ.get("GPU_CHECK_EXERCISE") == "1"
    if args.cpu and stage_.gpu_only and not (exercise and stage_.name == "agreement"):
        return {**line, "status": "skipped", "reason": stage_.gpu_only}
    figures, out, err = (os.path.join(logs, f"{stage_.name}.{x}") for x in ("json", "out", "err"))
    if os.path.exists(figures):  # not a figure from an earlier run
        os.unlink(figures)
    cmd = child_command(stage_, args.cpu, figures, os.path.join(work, stage_.name))
    start = time.monotonic()
    with open(out, "w") as so, open(err, "w") as se:
        child = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, start_new_session=True,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            code = child.wait(timeout=max(budget - GRACE_S, 1))
        except subprocess.TimeoutExpired:
            code = None  # SIGTERM first: torchrun's agent then stops its workers (own sessions)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(child.pid, sig)
                    child.wait(timeout=GRACE_S)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
    line["seconds"] = round(time.monotonic() - start, 2)
    try:
        with open(figures) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {"figures": {}, "skipped_parts": {}}
    line.update({k: v for k, v in saved["figures"].items() if k not in line})
    if saved["skipped_parts"]:
        line["skipped_parts"] = saved["skipped_parts"]
    last = tail(err) or tail(out)
    if code is None:
        line.update(status="failed", reason=f"ran past its budget of {budget:g} s; last output: "
                                            f"{last}")
    elif code:
        line.update(status="failed", reason=f"exit status {code}: {last}")
    else:
        line["status"] = "ok"
    return line


def brief(value):
    return (f"{value:.4g}" if isinstance(value, float) else json.dumps(value)[:200]
            if isinstance(value, (list, dict)) else str(value))


def table(lines):
    rows = ["| stage | status | seconds (budget) | figures |", "|---|---|---:|---|"]
    for line in lines:
        text = ", ".join(f"{k} {brief(v)}" for k, v in line.items() if k not in
                         ("stage", "status", "seconds", "budget_s", "mode")).replace("|", "/")
        rows.append(f"| {line['stage']} | {line['status']} | {line['seconds']:.1f} "
                    f"({line['budget_s']:g}) | {text} |")
    return "\n".join(rows)


def verify(path):
    """--verify: one line per stage, in order, none failed; the problems (empty when none)."""
    try:
        with open(path) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
    except (OSError, ValueError) as e:
        return [f"{path}: cannot read it as JSON lines ({e})"]
    problems = []
    names = [ln.get("stage") for ln in lines]
    if names != [s.name for s in STAGES]:
        problems.append(f"{path}: stages {names}, expected one line each for "
                        f"{[s.name for s in STAGES]}")
    problems += [f"{ln.get('stage')}: {ln.get('status')} ({ln.get('reason')})" for ln in lines
                 if ln.get("status") not in ("ok", "skipped")]
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true",
                   help="toy sizes on the CPU; the stages that need a GPU are skipped")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "bench", "out"),
                   help="folder of gpu_check.jsonl, gpu_check.md and the logs (default: $OUT, "
                        "else bench/out)")
    p.add_argument("--stages", default=None, help="comma-separated: only these stages")
    p.add_argument("--budget-scale", type=positive_number, default=1.0,
                   help="multiply every stage's budget (e.g. 2 on a slow machine)")
    p.add_argument("--verify", metavar="JSONL",
                   help="check a finished run's file instead: one line per stage, none failed")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--figures", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_budgets()
    by_name = {s.name: s for s in STAGES}
    if args.child:
        os.makedirs(args.work, exist_ok=True)
        ctx = Context(args.cpu, args.work, args.figures)
        ctx._save()
        by_name[args.child].run(ctx)
        return 0
    if args.verify:
        problems = verify(args.verify)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    args.out = os.path.abspath(args.out)  # the stages run in the repository's root
    try:
        check_writable_dir(args.out, "--out")
    except UsageError as e:
        p.error(str(e))
    chosen = args.stages.split(",") if args.stages else list(by_name)
    if set(chosen) - set(by_name):
        p.error(f"--stages: unknown {sorted(set(chosen) - set(by_name))}; known: "
                f"{', '.join(by_name)}")
    stages = [s for s in STAGES if s.name in chosen]
    if not args.cpu:
        import torch
        if not torch.cuda.is_available():
            p.error("no CUDA device here; run with --cpu for the dry run on the CPU")
    logs = os.path.join(args.out, "gpu_check_logs")
    os.makedirs(logs, exist_ok=True)
    # The runs' samples and checkpoints: fresh (the runs refuse old samples), and not in OUT,
    # which holds only what is worth fetching from a device machine
    work = tempfile.mkdtemp(prefix="gpu_check_")
    jsonl = os.path.join(args.out, "gpu_check.jsonl")
    open(jsonl, "w").close()
    total = sum(s.budget(args.cpu, args.budget_scale) for s in stages)
    print(f"# GPU check{' (--cpu: toy sizes on the CPU)' if args.cpu else ''}: {len(stages)} "
          f"stages, budgets {total:g} s in all; one JSON line each in {jsonl}", flush=True)
    lines, start = [], time.monotonic()
    for i, s in enumerate(stages, 1):
        line = run_stage(s, args, logs, work)
        shutil.rmtree(os.path.join(work, s.name), ignore_errors=True)
        lines.append(line)
        with open(jsonl, "a") as f:  # appended as soon as the stage ends
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        why = f"  {line['reason'][:300]}" if "reason" in line else ""
        print(f"[{i}/{len(stages)}] {s.name}: {line['status']} in {line['seconds']:.1f} s "
              f"(budget {line['budget_s']:g} s){why}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    md = table(lines)
    atomic_write(os.path.join(args.out, "gpu_check.md"), lambda f: f.write((md + "\n").encode()))
    print(f"\n{md}\n\n# {time.monotonic() - start:.0f} s in all", flush=True)
    return 1 if any(ln["status"] == "failed" for ln in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
