"""Command lines: the bad-input error, argument types, and the flags the three scripts share."""
import argparse
import dataclasses
import json
import math
import os
import re
import sys


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2, before any file is written."""


def _number(text, accept, expected):
    """A float from ``text`` that ``accept`` takes, else argparse's error saying ``expected``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
    return value


def fraction(text):
    """argparse type: a number in [0, 1]."""
    return _number(text, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def share(text):
    """argparse type: a number in (0, 1] (a part of the data that holds something)."""
    return _number(text, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")


def positive_number(text):
    """argparse type: a finite number > 0 (learning rates)."""
    return _number(text, lambda v: v > 0, "a finite number > 0")


def nonnegative_number(text):
    """argparse type: a finite number >= 0 (weight decay, step sizes)."""
    return _number(text, lambda v: v >= 0, "a finite number >= 0")


def momentum_factor(text):
    """argparse type: a number in [0, 1) (momentum factors: 1 or more never forgets)."""
    return _number(text, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def int_list(text):
    """argparse type: comma-separated integers, e.g. '100,150'."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def milestones(text):
    """argparse type: the epochs where the learning rate drops, e.g. '100,150': at least one,
    each positive, in increasing order."""
    values = int_list(text)
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one epoch, e.g. 30,50, got {text!r}")
    if values[0] <= 0 or any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"expected positive epochs in increasing order, got "
                                         f"{text!r}")
    return values


def _integer(text, accept, expected):
    """An int from ``text`` that ``accept`` takes, else argparse's error saying ``expected``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not accept(value):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
    return value


def positive_int(text):
    return _integer(text, lambda v: v > 0, "a positive integer")


def nonnegative_int(text):
    return _integer(text, lambda v: v >= 0, "an integer >= 0")


def seed(text):
    """argparse type: a random seed, an integer in [0, 2**63)."""
    return _integer(text, lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)")


def train_start_point(text):
    """argparse type: a sample number, or "mean" (TWA's -1) for the mean of the basis samples."""
    if text.strip().lower() in ("mean", "-1"):
        return "mean"
    return _integer(text, lambda v: v >= 0, "a sample number >= 0, or mean")


# The --basis names: a run's files carry its basis, then its tag (results_psgd_random_k5.json)
BASIS_NAMES = ("dldr", "span", "random")


def output_tag(text):
    """argparse type: the suffix of a run's files; not a basis name, which would give a run the
    file names (and the label) of a run with that basis."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '_', '.' or '-', got {text!r}")
    basis = next((b for b in BASIS_NAMES if text == b or text.startswith(b + "_")), None)
    if basis:
        raise argparse.ArgumentTypeError(
            f"{text!r} would give this run the file names of a --basis {basis} run; choose a tag "
            "that does not start with dldr, span or random")
    return text


class FromRecord:
    """The default of a data flag of the scripts that read samples: the value the samples' run.json
    records, else ``fallback`` (the authors' default). ``SubspaceOptions.from_args`` resolves it."""

    def __init__(self, fallback):
        self.fallback = fallback

    def __str__(self):
        return f"the samples' run.json, else {self.fallback}"


# The flags a run on samples takes from their run.json when not given, in this order (the label
# noise's seed only where there is noise: elsewhere --randomseed keeps the authors' default)
RECORDED = ("arch", "datasets", "corrupt", "smalldatasets", "randomseed")


def run_record(save_dir):
    """run.json of the samples in ``save_dir`` as a dict, or None where there is none (the
    authors' folders) or it cannot be read (check_provenance then says so)."""
    try:
        with open(os.path.join(save_dir, "run.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_defaults(values):
    """Resolve the FromRecord defaults in ``values`` (the parsed flags, a dict changed in place)
    from run.json in values["save_dir"]; returns the line saying what was taken, or None."""
    pending = [k for k in RECORDED if isinstance(values.get(k), FromRecord)]
    if not pending:
        return None
    record = run_record(values["save_dir"]) or {}
    taken = []
    for key in pending:
        noise_seed = key != "randomseed" or (values.get("corrupt") or 0) > 0
        fallback = values[key].fallback
        values[key] = record[key] if key in record and noise_seed else fallback
        if values[key] != fallback:  # what differs from the authors' default is said
            taken.append(f"--{key} {values[key]}")
    if not taken:
        return None
    return (f"=> {', '.join(taken)}: the samples' settings, from "
            f"{values['save_dir']}/run.json (not given on the command line)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: --flag: ...``) and exit status 2."""

    def error(self, message):
        print(f"error: {message}  (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_data_arguments(parser, *, arch, batch_size, workers=4, from_record=False):
    """The flags of every script that reads samples or data: what, where, how (the authors'
    names, spellings and defaults). ``from_record``: the flags of RECORDED default to the
    samples' run.json, then to the authors' defaults (FromRecord)."""
    p = parser
    default = FromRecord if from_record else (lambda value: value)
    p.add_argument("--arch", "-a", default=default(arch), metavar="ARCH",
                   help="model architecture, one of models.names(); for ImageNet and folder one of "
                        f"torchvision.models.list_models(), e.g. resnet18 (default: "
                        f"{default(arch)})")
    p.add_argument("--datasets", default=default("CIFAR10"), metavar="NAME",
                   help="dataset: CIFAR10, CIFAR100, MNIST, DIGITS, SYNTHETIC, ImageNet, folder "
                        f"(default: {default('CIFAR10')})")
    p.add_argument("--data-root", "--data_root", dest="data_root", default="../data",
                   help="where CIFAR and MNIST are read from or downloaded to, or the folder with "
                        "train/ and val/ for ImageNet and folder (default: ../data)")
    p.add_argument("-j", "--workers", default=workers, type=nonnegative_int, metavar="N",
                   help=f"data loading workers of the DataLoader path (default: {workers})")
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=batch_size,
                   type=positive_int, metavar="N", help=f"mini-batch size (default: {batch_size})")
    p.add_argument("-p", "--print-freq", "--print_freq", dest="print_freq", default=50,
                   type=positive_int, metavar="N", help="print every N iterations (default: 50)")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", default="save_temp",
                   help="folder of the samples 0.pt, 1.pt, ... (default: save_temp)")
    p.add_argument("--randomseed", default=default(1), type=seed, metavar="S",
                   help="seed of initialisation, data order, augmentation and label noise "
                        f"(default: {default(1)}" + (" where the samples have label noise, else 1)"
                                                     if from_record else ")"))
    p.add_argument("--corrupt", default=default(0.0), type=fraction, metavar="C",
                   help="fraction of training labels replaced by uniform random labels "
                        f"(default: {default(0)})")
    p.add_argument("--smalldatasets", default=default(None), type=share, metavar="P",
                   help="train on the first fraction P of the training set" +
                        (f" (default: {default('all of it')})" if from_record else ""))
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when present, else cpu)")
    p.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                   help="autocast precision; fp16 uses loss scaling (P-BFGS: bf16 only); --half "
                        "means fp16")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="precision of parameters and computation; float64 is slow, for numerical "
                        "checks such as comparing runs with different numbers of processes")
    p.add_argument("--loader", default="memory", choices=("memory", "dataloader"),
                   help="memory: data held on the device, augmented per batch there (fast, default); "
                        "dataloader: torchvision transforms in a DataLoader (the authors' path; "
                        "always for ImageNet and folder)")
    return p


def add_common_arguments(parser, *, arch, epochs, lr, batch_size, workers=4, from_record=False):
    """The flags the three training scripts share, with the authors' names, spellings and
    defaults: add_data_arguments' and the training's."""
    p = add_data_arguments(parser, arch=arch, batch_size=batch_size, workers=workers,
                           from_record=from_record)
    p.add_argument("--epochs", default=epochs, type=nonnegative_int, metavar="N",
                   help=f"number of total epochs to run (default: {epochs})")
    p.add_argument("--start-epoch", "--start_epoch", dest="start_epoch", default=0,
                   type=nonnegative_int, metavar="N",
                   help="manual epoch number: the epoch loop starts at N (with --resume the "
                        "checkpoint's epoch wins) (default: 0)")
    p.add_argument("--lr", "--learning-rate", "--learning_rate", dest="lr", default=lr,
                   type=positive_number,
                   metavar="LR", help=f"learning rate (default: {lr})")
    p.add_argument("--save-every", "--save_every", dest="save_every", default=10,
                   type=positive_int, metavar="N",
                   help="train_sgd.py also keeps a full checkpoint every N epochs (default: 10)")
    p.add_argument("--resume", nargs="?", const="auto", default="", metavar="PATH",
                   help="resume from PATH, or with no PATH from the save dir's last checkpoint "
                        "(this script's own checkpoint only: a sample or a final model is refused)")
    p.add_argument("--reuse", action="store_true",
                   help="as make does: keep a finished run with these settings and samples in "
                        "--save-dir (nothing is run), resume an unfinished one, start one where "
                        "there is none; a run with other settings there is refused")
    p.add_argument("--resume-weights", "--resume_weights", dest="resume_weights", default=None,
                   metavar="PATH",
                   help="start a new run from the weights in PATH (a sample, a final model such as "
                        "TWA.pt, any checkpoint); optimizer, schedule and data order start afresh, "
                        "and the results record it")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="only evaluate the starting model (with --resume PATH: the checkpoint's) "
                        "on the test set")
    p.add_argument("--pretrained", action="store_true",
                   help="torchvision's ImageNet weights for ImageNet and folder architectures; "
                        "accepted and without effect for the CIFAR architectures, as the authors'")
    p.add_argument("--half", action="store_true",
                   help="fp16 autocast with loss scaling on CUDA (the authors' flag)")
    p.add_argument("--deterministic", action="store_true",
                   help="repeatable on a GPU too, run to run and across a resume: cuDNN's and "
                        "torch's deterministic algorithms, no cuDNN autotuning (slower on a GPU; "
                        "CPU runs repeat without it)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (with CUDA graphs on CUDA: mode reduce-overhead)")
    p.add_argument("--compile-mode", default=None, metavar="MODE",
                   help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
    p.add_argument("--compile-backend", default="inductor", metavar="NAME",
                   help="torch.compile backend (default: inductor; aot_eager compiles in seconds)")
    return p


def add_sample_arguments(parser, *, params_end=51):
    """Which samples of the trajectory a run uses, and the tag of its output files."""
    p = parser
    p.add_argument("--params_start", "--params-start", dest="params_start", default=0,
                   type=nonnegative_int, metavar="N",
                   help="first sample of the trajectory; training restarts from it unless "
                        "--train-start says otherwise (default: 0)")
    p.add_argument("--params_end", "--params-end", dest="params_end", default=params_end,
                   type=positive_int, metavar="N",
                   help=f"samples params_start..params_end-1 build the basis (default: {params_end})")
    p.add_argument("--params_step", "--params-step", dest="params_step", default=1,
                   type=positive_int, metavar="S",
                   help="use every S-th sample of that range: params_start, params_start+S, ... "
                        "(default: 1, all of them)")
    p.add_argument("--output-tag", "--output_tag", dest="output_tag", default=None, type=output_tag,
                   metavar="TAG",
                   help="suffix for this run's output files, so several subspace runs can share one "
                        "save dir (e.g. TAG=k5 writes results_psgd_k5.json, PSGD_k5.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of a finished (or resumable) run with the same outputs "
                        "in --save-dir, which are refused otherwise")
    return p


def add_subspace_arguments(parser, *, n_components=40, params_end=51, basis="dldr",
                           train_start=None, bn_reestimate=False, weight_decay=1e-4):
    """The flags of the subspace scripts: which samples, which basis, where training starts."""
    p = add_sample_arguments(parser, params_end=params_end)
    p.add_argument("--weight-decay", "--weight_decay", "--wd", dest="weight_decay",
                   default=weight_decay, type=nonnegative_number, metavar="W",
                   help="P-SGD with --basis span: its SGD's weight decay, which keeps the weights "
                        "in the span (the span holds the start point). Otherwise accepted for the "
                        "authors' command lines and unused, as theirs: the DLDR subspace is affine "
                        "(the restart plus the centred directions) and a random one does not hold "
                        "the restart, so decay towards 0 would leave them; P-BFGS uses none "
                        f"(default: {weight_decay:g})")
    p.add_argument("--n_components", "--n-components", dest="n_components", default=n_components,
                   type=positive_int, metavar="K",
                   help=f"dimension of the subspace, for --basis dldr and random; the span basis "
                        f"has one direction per sample (default: {n_components})")
    p.add_argument("--streaming-basis", "--streaming_basis", dest="streaming_basis",
                   action="store_true",
                   help="build the DLDR or span basis from the memory-mapped sample files in "
                        "column blocks, so memory holds the basis plus ~1 GiB instead of all "
                        "samples (automatic when the samples exceed 2 GiB as float32); slower, "
                        "same basis")
    p.add_argument("--basis", default=basis, choices=("dldr", "span", "random"),
                   help="dldr: the trajectory's principal directions (centred samples, "
                        "--n_components of them); span: the span of the raw samples, one "
                        "orthonormal direction per sample (TWA's); random: an orthonormal random "
                        f"basis of --n_components directions (the control) (default: {basis})")
    p.add_argument("--train-start", "--train_start", dest="train_start", default=train_start,
                   type=train_start_point, metavar="N|mean",
                   help="where training starts: sample N, or mean (-1, TWA's spelling): the mean "
                        "of the basis samples, with BatchNorm statistics re-estimated on the "
                        "training data before the first step (default: "
                        f"{train_start or '--params_start'})")
    p.add_argument("--basis-file", "--basis_file", dest="basis_file", default=None, metavar="PATH",
                   help="reuse the basis saved in PATH when it records this run's kind, samples "
                        "(and their contents), size and seed; otherwise build it and save it there")
    p.add_argument("--no-bn-reestimate", dest="bn_reestimate", action="store_false",
                   default=bn_reestimate, help="the opposite of --bn-reestimate")
    p.add_argument("--bn-reestimate", "--bn_reestimate", dest="bn_reestimate",
                   default=bn_reestimate, action="store_true",
                   help="also evaluate with BatchNorm statistics re-estimated on the training data "
                        "after every epoch, and save the final model with them (every run "
                        "evaluates its final weights both ways; without this flag the saved model "
                        "keeps the statistics training left, as the authors')")
    return p


@dataclasses.dataclass(frozen=True)
class SubspaceOptions:
    """The flags of ``add_common_arguments`` and ``add_subspace_arguments`` that a subspace run
    reads, by their argparse names: the scripts' ``main`` turns the parsed command line into this
    once, so the namespace itself travels no further (a script without some of these flags, such
    as swa.py, leaves them at None). ``arguments``: every flag, for the records."""
    save_dir: str = None
    arch: str = None
    datasets: str = None
    data_root: str = None
    workers: int = None
    epochs: int = None
    start_epoch: int = None
    batch_size: int = None
    print_freq: int = None
    resume: str = None
    resume_weights: str = None
    reuse: bool = False
    overwrite: bool = False
    evaluate: bool = False
    half: bool = False
    randomseed: int = None
    corrupt: float = None
    smalldatasets: float = None
    device: str = None
    amp: str = None
    dtype: str = None
    compile: bool = False
    compile_mode: str = None
    compile_backend: str = None
    loader: str = None
    weight_decay: float = None
    n_components: int = None
    params_start: int = None
    params_end: int = None
    params_step: int = None
    streaming_basis: bool = False
    basis: str = None
    train_start: object = None
    basis_file: str = None
    bn_reestimate: bool = False
    deterministic: bool = False
    output_tag: str = None
    arguments: dict = None

    @classmethod
    def from_args(cls, args):
        """The options of a parsed command line, the data flags not given taken from the samples'
        run.json (``recorded_defaults``, said in one line)."""
        values = dict(vars(args))
        line = recorded_defaults(values)
        if line and os.environ.get("RANK", "0") == "0":  # under torchrun: said once
            print(line, flush=True)
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)
                      if f.name in values}, arguments=values)
