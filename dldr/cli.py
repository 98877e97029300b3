"""Command lines: the bad-input error, argument types, and the flags the three scripts share."""
import argparse
import math
import os
import re
import shlex
import signal
import sys


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2, before any file is written."""


def resume_command(argv):
    """The command line that resumes a run started with ``argv``: from the save dir's checkpoint,
    whatever --resume PATH or --overwrite it was started with."""
    args, skip = [], False
    for a in argv:
        if skip and not a.startswith("-"):  # the path of a --resume PATH
            skip = False
            continue
        skip = a == "--resume"
        if not (skip or a.startswith("--resume=") or a == "--overwrite"):
            args.append(a)
    args.append("--resume")
    script = os.path.relpath(sys.argv[0]) if sys.argv[0].endswith(".py") else "SCRIPT.py"
    launcher = "torchrun ... " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "python "
    return launcher + shlex.join([script, *args])


def run_main(main, argv=None):
    """Run a script's ``main(argv)`` as its command line does: bad input is one line on stderr and
    exit status 2; a failed write one line and exit status 1; SIGINT and SIGTERM stop the run
    (after an atomic write in progress) with one line that says where it stopped and how to resume
    it, and exit status 130 or 143."""
    import torch.distributed as dist

    from . import files
    from .distributed import is_main_process
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    previous = files.install_signal_handlers()
    try:
        return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except files.WriteError as e:
        again = (f"continue with: {resume_command(argv)}" if e.resumable
                 else "run the same command again")
        print(f"error: {e}{e.where}; fix the cause (space, permissions), then {again}",
              file=sys.stderr)
        sys.exit(1)
    except files.Interrupted as e:
        if is_main_process():
            again = (f"resume with: {resume_command(argv)}" if e.resumable
                     else "run the same command again")
            print(f"stopped by {e}{e.where}; {again}", file=sys.stderr)
        sys.exit(128 + e.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        files.release_locks()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def fraction(text):
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def int_list(text):
    """argparse type: comma-separated integers, e.g. '100,150'."""
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def output_tag(text):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '_', '.' or '-', got {text!r}")
    return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: --flag: ...``) and exit status 2."""

    def error(self, message):
        print(f"error: {message}  (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_common_arguments(parser, *, arch, epochs, lr, batch_size, workers=4):
    """The flags the three scripts share, with the authors' names, spellings and defaults."""
    p = parser
    p.add_argument("--arch", "-a", default=arch, metavar="ARCH",
                   help="model architecture, one of models.names(); for ImageNet and folder one of "
                        f"torchvision.models.list_models(), e.g. resnet18 (default: {arch})")
    p.add_argument("--datasets", default="CIFAR10", metavar="NAME",
                   help="dataset: CIFAR10, CIFAR100, MNIST, DIGITS, SYNTHETIC, ImageNet, folder "
                        "(default: CIFAR10)")
    p.add_argument("--data-root", "--data_root", dest="data_root", default="../data",
                   help="where CIFAR and MNIST are read from or downloaded to, or the folder with "
                        "train/ and val/ for ImageNet and folder (default: ../data)")
    p.add_argument("-j", "--workers", default=workers, type=nonnegative_int, metavar="N",
                   help=f"data loading workers of the DataLoader path (default: {workers})")
    p.add_argument("--epochs", default=epochs, type=nonnegative_int, metavar="N",
                   help=f"number of total epochs to run (default: {epochs})")
    p.add_argument("--start-epoch", "--start_epoch", dest="start_epoch", default=0,
                   type=nonnegative_int, metavar="N",
                   help="manual epoch number: the epoch loop starts at N (with --resume the "
                        "checkpoint's epoch wins) (default: 0)")
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=batch_size,
                   type=positive_int, metavar="N", help=f"mini-batch size (default: {batch_size})")
    p.add_argument("--lr", "--learning-rate", "--learning_rate", dest="lr", default=lr, type=float,
                   metavar="LR", help=f"learning rate (default: {lr})")
    p.add_argument("-p", "--print-freq", "--print_freq", dest="print_freq", default=50,
                   type=positive_int, metavar="N", help="print every N iterations (default: 50)")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", default="save_temp",
                   help="folder of the samples 0.pt, 1.pt, ... (default: save_temp)")
    p.add_argument("--save-every", "--save_every", dest="save_every", default=10,
                   type=positive_int, metavar="N",
                   help="train_sgd.py also keeps a full checkpoint every N epochs (default: 10)")
    p.add_argument("--resume", nargs="?", const="auto", default="", metavar="PATH",
                   help="resume from PATH, or with no PATH from the save dir's last checkpoint")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="only evaluate the starting model (with --resume PATH: the checkpoint's) "
                        "on the test set")
    p.add_argument("--pretrained", action="store_true",
                   help="torchvision's ImageNet weights for ImageNet and folder architectures; "
                        "accepted and without effect for the CIFAR architectures, as the authors'")
    p.add_argument("--half", action="store_true",
                   help="fp16 autocast with loss scaling on CUDA (the authors' flag)")
    p.add_argument("--randomseed", default=1, type=int, metavar="S",
                   help="seed of initialisation, data order, augmentation and label noise (default: 1)")
    p.add_argument("--corrupt", default=0.0, type=fraction, metavar="C",
                   help="fraction of training labels replaced by uniform random labels (default: 0)")
    p.add_argument("--smalldatasets", default=None, type=fraction, metavar="P",
                   help="train on the first fraction P of the training set")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when present, else cpu)")
    p.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                   help="autocast precision; fp16 uses loss scaling (P-BFGS: bf16 only); --half "
                        "means fp16")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="precision of parameters and computation; float64 is slow, for numerical "
                        "checks such as comparing runs with different numbers of processes")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (with CUDA graphs on CUDA: mode reduce-overhead)")
    p.add_argument("--compile-mode", default=None, metavar="MODE",
                   help="torch.compile mode (default: reduce-overhead on CUDA, default on CPU)")
    p.add_argument("--compile-backend", default="inductor", metavar="NAME",
                   help="torch.compile backend (default: inductor; aot_eager compiles in seconds)")
    p.add_argument("--loader", default="memory", choices=("memory", "dataloader"),
                   help="memory: data held on the device, augmented per batch there (fast, default); "
                        "dataloader: torchvision transforms in a DataLoader (the authors' path; "
                        "always for ImageNet and folder)")
    return p


def add_subspace_arguments(parser, *, n_components=40, params_end=51):
    """The flags of the two subspace scripts: which samples, how many directions, which basis."""
    p = parser
    p.add_argument("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", default=1e-4,
                   type=float, metavar="W",
                   help="accepted for the authors' command lines; P-BFGS and P-SGD use none, as "
                        "theirs (default: 1e-4)")
    p.add_argument("--n_components", "--n-components", dest="n_components", default=n_components,
                   type=positive_int, metavar="K",
                   help=f"dimension of the subspace (default: {n_components})")
    p.add_argument("--params_start", "--params-start", dest="params_start", default=0,
                   type=nonnegative_int, metavar="N",
                   help="first sample of the trajectory; training restarts from it (default: 0)")
    p.add_argument("--params_end", "--params-end", dest="params_end", default=params_end,
                   type=positive_int, metavar="N",
                   help=f"samples params_start..params_end-1 build the basis (default: {params_end})")
    p.add_argument("--params_step", "--params-step", dest="params_step", default=1,
                   type=positive_int, metavar="S",
                   help="use every S-th sample of that range: params_start, params_start+S, ... "
                        "(default: 1, all of them)")
    p.add_argument("--streaming-basis", "--streaming_basis", dest="streaming_basis",
                   action="store_true",
                   help="build the DLDR basis from the memory-mapped sample files in column blocks, "
                        "so memory holds the basis plus ~1 GiB instead of all samples (automatic "
                        "when the samples exceed 2 GiB as float32); slower, same basis")
    p.add_argument("--basis", default="dldr", choices=("dldr", "random"),
                   help="dldr: the trajectory's principal directions; random: an orthonormal "
                        "random basis of the same size (the control)")
    p.add_argument("--bn-reestimate", "--bn_reestimate", dest="bn_reestimate", action="store_true",
                   help="also evaluate with BatchNorm statistics re-estimated on the training data "
                        "after every epoch, and save the final model with them (every run "
                        "evaluates its final weights both ways; without this flag the saved model "
                        "keeps the statistics training left, as the authors')")
    p.add_argument("--output-tag", "--output_tag", dest="output_tag", default=None, type=output_tag,
                   metavar="TAG",
                   help="suffix for this run's output files, so several subspace runs can share one "
                        "save dir (e.g. TAG=k5 writes results_psgd_k5.json, PSGD_k5.pt)")
    return p
