"""Shared pieces of the three DLDR scripts: errors, data, samples, the subspace basis, vector helpers.

Read top to bottom: command-line helpers, seeding and devices, datasets and the batch loader,
atomic files and samples, the DLDR basis, flat parameter vectors, training/evaluation loops.
"""
import argparse
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import models

# ----------------------------------------------------------------------------------------------
# Errors and argument helpers
# ----------------------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit status 2, before any file is written."""


def run_main(main, argv=None):
    """Run a script's ``main(argv)``; turn UsageError into one line on stderr and exit status 2."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
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


def output_tag(text):
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"expected letters, digits, '_', '.' or '-', got {text!r}")
    return text


def nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: --flag: ...``) and exit status 2."""

    def error(self, message):
        print(f"error: {message}  (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_common_arguments(parser, *, epochs, lr, batch_size, workers=4):
    """The flags the three scripts share, with the authors' names, spellings and defaults."""
    p = parser
    p.add_argument("--arch", "-a", default="resnet20", metavar="ARCH",
                   help="model architecture, one of models.names(); for ImageNet and folder one of "
                        "torchvision.models.list_models(), e.g. resnet18 (default: resnet20)")
    p.add_argument("--datasets", default="CIFAR10", metavar="NAME",
                   help=f"dataset: {', '.join(DATASETS)} (default: CIFAR10)")
    p.add_argument("--data-root", "--data_root", dest="data_root", default="../data",
                   help="where CIFAR is read from or downloaded to, or the folder with train/ and "
                        "val/ for ImageNet and folder (default: ../data)")
    p.add_argument("-j", "--workers", default=workers, type=nonnegative_int, metavar="N",
                   help=f"data loading workers of the DataLoader path (default: {workers})")
    p.add_argument("--epochs", default=epochs, type=nonnegative_int, metavar="N",
                   help=f"number of epochs to run (default: {epochs})")
    p.add_argument("-b", "--batch-size", "--batch_size", dest="batch_size", default=batch_size,
                   type=positive_int, metavar="N", help=f"mini-batch size (default: {batch_size})")
    p.add_argument("--lr", "--learning-rate", dest="lr", default=lr, type=float, metavar="LR",
                   help=f"learning rate (default: {lr})")
    p.add_argument("-p", "--print-freq", "--print_freq", dest="print_freq", default=50,
                   type=positive_int, metavar="N", help="print every N iterations (default: 50)")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", default="save_temp",
                   help="folder of the samples 0.pt, 1.pt, ... (default: save_temp)")
    p.add_argument("--save-every", "--save_every", dest="save_every", default=10,
                   type=positive_int, metavar="N",
                   help="also keep a full checkpoint every N epochs (default: 10)")
    p.add_argument("--resume", nargs="?", const="auto", default="", metavar="PATH",
                   help="resume from PATH, or with no PATH from the save dir's last checkpoint")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="only evaluate the starting model on the test set")
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
                   help="autocast precision; fp16 uses loss scaling (P-BFGS: bf16 recommended); "
                        "--half means fp16")
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
    p = parser
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
    p.add_argument("--weight-decay", "--weight_decay", "--wd", dest="weight_decay", default=0.0,
                   type=float, metavar="W",
                   help="accepted for the authors' command lines; the subspace methods use none")
    p.add_argument("--output-tag", "--output_tag", dest="output_tag", default=None, type=output_tag,
                   metavar="TAG",
                   help="suffix for this run's output files, so several subspace runs can share one "
                        "save dir (e.g. TAG=k5 writes results_psgd_k5.json, PSGD_k5.pt)")
    return p


# ----------------------------------------------------------------------------------------------
# Seeding, devices, logging
# ----------------------------------------------------------------------------------------------


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# Several processes: torchrun, DistributedDataParallel, BatchNorm over the global batch
# ----------------------------------------------------------------------------------------------


def world():
    """(rank, number of processes); (0, 1) when not launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process():
    return world()[0] == 0


def init_distributed(device):
    """Join torchrun's process group when launched by it; returns this process's device.

    NCCL with one GPU per process (LOCAL_RANK) on CUDA, Gloo on CPUs. Only rank 0 prints to
    stdout and writes files (see ``atomic_write``); errors still reach stderr from every rank.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def all_reduce_sum_(tensor):
    """Sum ``tensor`` over the processes in place; nothing to do in a single process."""
    if world()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def global_batch_share(n_local, device):
    """n_local / n_global: this process's share of the global batch (1.0 in one process).

    A process's mean loss times its share, summed over the processes, is the mean loss of the
    global batch, even when the processes hold unequal parts of it (the last batch of an epoch).
    """
    if world()[1] == 1:
        return 1.0
    total = all_reduce_sum_(torch.tensor([float(n_local)], dtype=torch.float64, device=device))
    return n_local / total[0]


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes (every process's
    output depends on every process's input)."""

    @staticmethod
    def forward(ctx, tensor):
        return all_reduce_sum_(tensor.clone())

    @staticmethod
    def backward(ctx, grad):
        return all_reduce_sum_(grad.clone())


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    torch.nn.SyncBatchNorm runs on GPUs only; this one runs anywhere (it is what the CPU/Gloo
    runs use). Mean first, then the centred second moment: two small all-reduces per layer, but
    no E[x^2] - E[x]^2 cancellation. Gradients flow through the all-reduces. Same parameter and
    buffer names as nn.BatchNorm*d, so samples stay interchangeable.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected an input with at least 2 dimensions, got {x.dim()}")

    def forward(self, x):
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        all_reduce = _DifferentiableAllReduce.apply
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model, device):
    """Under torchrun, every BatchNorm normalises over the global batch, so that several
    processes compute what one process would with the same global batch."""
    if world()[1] == 1:
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, SyncBatchNorm):
                new = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
                # The same parameter and buffer tensors: nothing is copied or reordered.
                for key, value in list(child._parameters.items()) + list(child._buffers.items()):
                    setattr(new, key, value)
                new.train(child.training)
                parent._modules[name] = new
    return model


def distributed_model(model, device):
    """DistributedDataParallel around ``model`` under torchrun (gradients averaged over the
    processes during backward); the model itself otherwise."""
    if world()[1] == 1:
        return model
    import inspect
    ddp = torch.nn.parallel.DistributedDataParallel
    # BatchNorm buffers already agree (statistics are global): no broadcast before each forward.
    # The option's name changed in recent torch versions.
    key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
           else "broadcast_buffers")
    return ddp(model, device_ids=[device] if device.type == "cuda" else None, **{key: False})


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class ImageSet:
    """A whole split in memory: uint8 images (N, 3, H, W), int64 labels, normalisation, augmentation."""

    def __init__(self, images, labels, num_classes, mean, std, augment):
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def subset(self, n):
        return ImageSet(self.images[:n], self.labels[:n], self.num_classes, self.mean, self.std,
                        self.augment)

    def with_labels(self, labels):
        return ImageSet(self.images, labels, self.num_classes, self.mean, self.std, self.augment)


def _cifar(train, root, cls, mean, std):
    try:
        ds = cls(root=root, train=train, download=True)
    except Exception as e:  # download or archive failure: one line naming the folder
        raise UsageError(f"--data-root {root}: cannot read or download {cls.__name__} ({e})")
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return ImageSet(images, labels, len(ds.classes), mean, std, augment=train)


def load_cifar10(train, root):
    import torchvision  # imported here: DIGITS and synthetic runs do not need it
    # The authors normalised CIFAR-10 with the ImageNet statistics; kept for identical inputs.
    return _cifar(train, root, torchvision.datasets.CIFAR10, IMAGENET_MEAN, IMAGENET_STD)


def load_cifar100(train, root):
    import torchvision
    return _cifar(train, root, torchvision.datasets.CIFAR100, CIFAR100_MEAN, CIFAR100_STD)


# The test images of DIGITS: sklearn's train_test_split(test_size=360, stratify=target,
# random_state=0), frozen as a 1797-bit mask (hex, most significant bit first) so that the split
# does not depend on the scikit-learn version and loading needs no sklearn import (1.1 s per
# process). tests/test_data.py checks it against train_test_split.
_DIGITS_TEST_MASK = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a0"
    "00080a8820441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020e"
    "c409000224840083a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a810216004"
    "480004042a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380803c00819000010"
    "0e01008410a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c0282024"
    "2120138a41500")


def digits_arrays():
    """scikit-learn's bundled digits as (images (1797, 8, 8) float64 in 0..16, labels int64), read
    from its data file as sklearn.datasets.load_digits does, without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    path = spec and spec.origin and os.path.join(os.path.dirname(spec.origin), "datasets", "data",
                                                 "digits.csv.gz")
    if not path or not os.path.exists(path):
        raise UsageError("--datasets DIGITS: scikit-learn's bundled digits data was not found; "
                         "pip install scikit-learn")
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def load_digits(train, root=None):
    """scikit-learn's bundled 8x8 digits, resized to 3x32x32; a fixed stratified 1437/360 split."""
    images, labels = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels)
    test = np.unpackbits(np.frombuffer(bytes.fromhex(_DIGITS_TEST_MASK), np.uint8))[:len(y)]
    idx = torch.from_numpy(np.flatnonzero(test == (0 if train else 1)))
    # No crop/flip: flipping a digit changes its meaning.
    return ImageSet(x[idx], y[idx], 10, (0.305,) * 3, (0.324,) * 3, augment=False)


def load_synthetic(train, root=None, n_train=50000, n_test=10000, num_classes=10):
    """CIFAR-sized learnable data: a smooth template per class plus noise, fixed seed."""
    g = torch.Generator().manual_seed(12345)
    templates = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=(32, 32),
                              mode="bilinear", align_corners=False)
    n = n_train if train else n_test
    g.manual_seed(12346 if train else 12347)
    labels = torch.randint(num_classes, (n,), generator=g)
    images = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    for start in range(0, n, 10000):  # in chunks to bound the float working set
        lab = labels[start:start + 10000]
        noise = torch.randn(len(lab), 3, 32, 32, generator=g) * 0.25
        images[start:start + 10000] = ((templates[lab] + noise).clamp(0, 1) * 255).to(torch.uint8)
    return ImageSet(images, labels, num_classes, (0.5,) * 3, (0.3,) * 3, augment=train)


FOLDER_DATASETS = ("ImageNet", "folder")  # read from disk per batch; --arch names torchvision models


class FolderSet:
    """A split in the ImageFolder layout (ROOT/CLASS/IMAGE), decoded from disk batch by batch.

    Holds paths and labels only, with ImageSet's small interface (labels, num_classes, subset,
    with_labels, mean/std, augment), so --smalldatasets and --corrupt work unchanged.
    """

    def __init__(self, paths, labels, classes, augment):
        # One numpy bytes array, not a list of str: forked DataLoader workers then share the pages
        # instead of copying them on every refcount touch (1.28M paths for ImageNet).
        self.paths = np.asarray(paths, dtype=np.bytes_)
        self.labels = labels
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.augment = augment

    def __len__(self):
        return len(self.labels)

    def subset(self, n):
        """n images taken round-robin over the classes (each class's first image, then its second,
        ...), kept in folder order. A plain prefix would hold only the first classes, as ImageFolder
        sorts by class; this needs no seed, so every script keeps the same images."""
        labels = self.labels
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(len(labels)) - starts[labels[order]]
        keep = torch.argsort(rank * self.num_classes + labels, stable=True)[:n].sort().values
        return FolderSet(self.paths[keep.numpy()], labels[keep], self.classes, self.augment)

    def with_labels(self, labels):
        return FolderSet(self.paths, labels, self.classes, self.augment)


def _folder_layout_hint(name, root):
    return (f"--datasets {name} expects {os.path.join(root, 'train', 'CLASS', 'IMAGE')} and "
            f"{os.path.join(root, 'val', 'CLASS', 'IMAGE')} (the ImageFolder layout)")


def folder_classes(name, root):
    """Class names of a folder dataset, read from the train/ and val/ folder names (no image scan)."""
    from torchvision.datasets.folder import find_classes
    found = {}
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise UsageError(f"--data-root {root}: no {split}/ folder; {_folder_layout_hint(name, root)}")
        try:
            found[split] = find_classes(path)[0]
        except FileNotFoundError:
            loose = "holds images but " if os.listdir(path) else "is empty: "
            # e.g. ILSVRC2012's val/ ships flat; it must be sorted into one folder per class
            raise UsageError(f"--data-root {root}: {split}/ {loose}no class folders; "
                             f"{_folder_layout_hint(name, root)}")
    train, val = found["train"], found["val"]
    if train != val:  # the label numbers are the sorted folder names: they must agree
        first = sorted(set(train) ^ set(val))[0]
        raise UsageError(f"--data-root {root}: train/ has {len(train)} class folders and val/ "
                         f"{len(val)}, differing in {first!r}; both need the same class folders")
    return train


def load_folder(train, root, name="folder"):
    """``--datasets folder``: ROOT/train (augmented) or ROOT/val, classes from the folder names."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    classes = folder_classes(name, root)
    split = "train" if train else "val"
    items = make_dataset(os.path.join(root, split), {c: i for i, c in enumerate(classes)},
                         extensions=IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[label] for _, label in items})
    if empty:  # a class without images cannot be learnt or tested
        raise UsageError(f"--data-root {root}: {split}/{empty[0]}/ holds no images ({len(empty)} "
                         f"such class folders; image files end in {', '.join(IMG_EXTENSIONS)})")
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return FolderSet([os.fsencode(path) for path, _ in items], labels, classes, augment=train)


def load_imagenet(train, root):
    """``--datasets ImageNet``: the ILSVRC2012 train/ and val/ folders, one folder per synset."""
    return load_folder(train, root, name="ImageNet")


DATASETS = {
    "CIFAR10": load_cifar10,
    "CIFAR100": load_cifar100,
    "DIGITS": load_digits,
    "SYNTHETIC": load_synthetic,
    "ImageNet": load_imagenet,
    "folder": load_folder,
}


def check_dataset_name(name, data_root=None):
    """Known name; with ``data_root``, a folder dataset's train/ and val/ layout too (cheap)."""
    if name not in DATASETS:
        raise UsageError(f"unknown --datasets {name!r}; known: {', '.join(DATASETS)}")
    if name in FOLDER_DATASETS and data_root is not None:
        folder_classes(name, data_root)


def noisy_labels(labels, fraction, num_classes, seed):
    """Replace round(fraction * N) labels, chosen from the seed, by labels uniform over all classes.

    Returns (new_labels, chosen_indices). A replacement may equal the original label, as in
    the authors' scheme; only the chosen positions are drawn, so the result is a pure function
    of (labels, fraction, num_classes, seed) and every script sees the same noisy labels.
    """
    n = len(labels)
    count = int(round(fraction * n))
    rng = np.random.default_rng([int(seed) % 2**63, 0xD1D2])  # independent of training RNG
    chosen = np.sort(rng.permutation(n)[:count])
    new = labels.clone()
    new[torch.from_numpy(chosen)] = torch.from_numpy(rng.integers(0, num_classes, count))
    return new, chosen


def load_data(args, write_noise_record=False):
    """(train, test) ImageSets (FolderSets for ImageNet/folder) after --smalldatasets and --corrupt.

    The noise record ``noisy_labels.json`` in the save dir lists the chosen indices and their new
    labels; a script that finds one checks its own labels against it.
    """
    check_dataset_name(args.datasets)
    loader = DATASETS[args.datasets]
    train = loader(True, args.data_root)
    test = loader(False, args.data_root)
    if args.smalldatasets is not None:
        n = int(len(train) * args.smalldatasets)
        if n < 1:
            raise UsageError(f"--smalldatasets {args.smalldatasets} leaves no training image")
        train = train.subset(n)
    if args.corrupt > 0:
        labels, chosen = noisy_labels(train.labels, args.corrupt, train.num_classes,
                                      args.randomseed)
        record = {"corrupt": args.corrupt, "randomseed": args.randomseed,
                  "num_classes": train.num_classes, "num_train": len(train),
                  "changed": int((labels != train.labels).sum()),
                  "indices": chosen.tolist(), "labels": labels[chosen].tolist()}
        path = os.path.join(args.save_dir, "noisy_labels.json")
        if write_noise_record:
            atomic_write_json(path, record)
        elif os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved["indices"] != record["indices"] or saved["labels"] != record["labels"]:
                raise UsageError(f"{path}: the noisy labels of the samples differ from these; "
                                 "use the same --corrupt, --randomseed and --smalldatasets")
        train = train.with_labels(labels)
    return train, test


# ----------------------------------------------------------------------------------------------
# Batches: the in-memory device path and the DataLoader path
# ----------------------------------------------------------------------------------------------


def crop_flip(padded, top, left, flip, size=32):
    """Crop ``size`` x ``size`` windows at (top, left) from padded images and mirror where ``flip``.

    The same result as torchvision's RandomCrop(size, padding) followed by RandomHorizontalFlip
    for the same offsets and coin flips, done for a whole batch with one gather.
    """
    n, c = padded.shape[:2]
    ar = torch.arange(size, device=padded.device)
    rows = (top[:, None] + ar)[:, None, :, None]                       # (n,1,size,1)
    cols = left[:, None] + ar                                          # (n,size)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=padded.device)[:, None, None, None]
    chan = torch.arange(c, device=padded.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


class MemoryLoader:
    """Batches from a split held on the device: shuffled, augmented and normalised there.

    All random draws of an epoch come from ``self.generator`` (a CPU generator, so the same seed
    gives the same batches on any device) and its state is part of a checkpoint.
    """

    def __init__(self, data, batch_size, device, shuffle, seed=0, padding=4):
        self.data = data
        self.batch_size = batch_size
        # Under torchrun every process draws the same permutation and augmentation, then takes
        # its part of each global batch (training) or its shard of the split (evaluation).
        self.rank, self.world_size = world()
        self.device = device
        self.shuffle = shuffle
        self.augment = data.augment and shuffle
        self.padding = padding
        self.generator = torch.Generator().manual_seed(seed)
        images = data.images.to(device)
        if self.augment:
            images = F.pad(images, (padding,) * 4)  # zero padding, as RandomCrop(padding=4)
        self.images = images
        self.labels = data.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1) * 255

    def _batches(self):
        """(start, end) of the batches this process iterates over, in positions of ``order``."""
        n, b, w = len(self.data), self.batch_size, self.world_size
        if not self.shuffle and w > 1:
            shard = torch.tensor_split(torch.arange(n), w)[self.rank]
            lo, hi = (int(shard[0]), int(shard[-1]) + 1) if len(shard) else (0, 0)
            return [(s, min(s + b, hi)) for s in range(lo, hi, b)]
        # A final global batch smaller than the number of processes is dropped everywhere.
        return [(s, min(s + b, n)) for s in range(0, n, b) if min(s + b, n) - s >= w]

    def __len__(self):
        return len(self._batches())

    def __iter__(self):
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.augment:
            span = 2 * self.padding + 1
            offsets = torch.randint(span, (n, 2), generator=self.generator)
            flips = torch.rand(n, generator=self.generator) < 0.5
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        order = order.to(self.device)
        size = self.data.images.shape[-1]
        for start, end in self._batches():
            if self.shuffle and self.world_size > 1:  # this process's part of the global batch
                part = torch.tensor_split(torch.arange(start, end), self.world_size)[self.rank]
                start, end = int(part[0]), int(part[-1]) + 1
            idx = order[start:end]
            if self.augment:
                sel = torch.arange(start, end, device=self.device)
                x = crop_flip(self.images[idx], offsets[sel, 0], offsets[sel, 1], flips[sel], size)
            else:
                x = self.images[idx]
            x = (x.float() - self.mean) / self.std
            yield x, self.labels[idx]


class _TorchvisionView(torch.utils.data.Dataset):
    def __init__(self, data, transform):
        self.data, self.transform = data, transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(self.data.images[i]), self.data.labels[i]


class _FolderView(torch.utils.data.Dataset):
    def __init__(self, data, transform):
        from torchvision.datasets.folder import default_loader  # PIL, converted to RGB
        self.data, self.transform, self.load = data, transform, default_loader

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.transform(self.load(os.fsdecode(self.data.paths[i]))), self.data.labels[i]


def folder_loader(data, args, device, shuffle, batch_size, seed=0):
    """A FolderSet's batches: JPEG decoding and the usual ImageNet transforms in --workers processes."""
    import torchvision.transforms as T
    if data.augment and shuffle:
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(256), T.CenterCrop(224)]
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(data.mean, data.std)])
    return _dataloader(_FolderView(data, transform), args, device, shuffle, batch_size, seed)


def _dataloader(view, args, device, shuffle, batch_size, seed):
    """A DataLoader over ``view`` whose batches land on the device.

    Under torchrun each process reads its part: for training a DistributedSampler (shuffled from
    the seed and the epoch, batch_size // processes images per process, so --batch-size stays
    the global batch), for evaluation a contiguous shard of the split.
    """
    rank, size = world()
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if size > 1 and shuffle:
        sampler = torch.utils.data.DistributedSampler(view, size, rank, shuffle=True, seed=seed)
        batch_size = max(1, batch_size // size)
    elif size > 1:
        view = torch.utils.data.Subset(
            view, torch.tensor_split(torch.arange(len(view)), size)[rank].tolist())
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size,
                                         shuffle=shuffle and sampler is None, sampler=sampler,
                                         num_workers=args.workers, generator=generator,
                                         pin_memory=device.type == "cuda")
    return _DeviceLoader(loader, device, generator, sampler)


def make_loader(data, args, device, shuffle, seed=0):
    """The batch source for a split: MemoryLoader by default, a torchvision DataLoader on request."""
    batch_size = args.batch_size if shuffle else max(args.batch_size, 256)
    if isinstance(data, FolderSet):  # images on disk, decoded per batch: --loader does not apply
        return folder_loader(data, args, device, shuffle, batch_size, seed)
    if args.loader == "memory":
        return MemoryLoader(data, batch_size, device, shuffle, seed)
    import torchvision.transforms as T
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if data.augment and shuffle else []
    transform = T.Compose(steps + [T.ConvertImageDtype(torch.float32), T.Normalize(data.mean, data.std)])
    return _dataloader(_TorchvisionView(data, transform), args, device, shuffle, batch_size, seed)


class _DeviceLoader:
    """A DataLoader's batches moved to the device. ``generator`` (the shuffle's) and ``epoch``
    (a DistributedSampler's) are what a checkpoint needs to continue the same order."""

    def __init__(self, loader, device, generator, sampler=None):
        self.loader, self.device = loader, device
        self.generator, self.sampler = generator, sampler
        self.epoch = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


# ----------------------------------------------------------------------------------------------
# Files: atomic writes, samples, checkpoints, provenance
# ----------------------------------------------------------------------------------------------


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write):
    """Write through ``write(file)`` into a temporary file beside ``path``, fsync, then rename.

    Under torchrun only rank 0 writes: every process holds the same state, one copy is enough.
    """
    if not is_main_process():
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600; samples are shared, so honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_torch_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def safe_load(path, mmap=False):
    """torch.load with weights_only=True; any failure is a UsageError naming the file.

    mmap=True maps the file instead of reading it: tensors read from it page by page on access.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: not a loadable sample or checkpoint (truncated, foreign or "
                         f"unsafe: {first[:200]})")


def sample_path(save_dir, epoch):
    return os.path.join(save_dir, f"{epoch}.pt")


def available_samples(save_dir):
    """Sorted epochs E of the files ``E.pt`` in save_dir."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(int(name[:-3]) for name in os.listdir(save_dir)
                  if name.endswith(".pt") and name[:-3].isdigit())


def describe_epochs(epochs):
    """'0..80' style summary of a sorted list of ints."""
    if not epochs:
        return "none"
    runs, start, prev = [], epochs[0], epochs[0]
    for e in epochs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        runs.append(f"{start}" if start == prev else f"{start}..{prev}")
        if e is not None:
            start = prev = e
    return ", ".join(runs)


def save_model(model, path):
    """The model's state dict, on the CPU, written atomically (samples and final models alike)."""
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def save_sample(model, save_dir, epoch):
    save_model(model, sample_path(save_dir, epoch))


def strip_module_prefix(state):
    """Keys saved from nn.DataParallel / DDP models start with 'module.'; drop it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state(path, mmap=False):
    state = safe_load(path, mmap=mmap)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path}: not a model state dict")
    return strip_module_prefix(state)


def check_state_matches(state, model, path, arch):
    """Samples of another architecture are an error naming the file and the first mismatch."""
    own = model.state_dict()
    for name, p in model.named_parameters():
        if name not in state:
            raise UsageError(f"{path}: no parameter {name!r}; the samples are not of --arch {arch}")
        if state[name].shape != p.shape:
            raise UsageError(f"{path}: parameter {name!r} has shape {tuple(state[name].shape)}, "
                             f"--arch {arch} expects {tuple(p.shape)}; the samples are of another "
                             "architecture or number of classes")
    extra = set(state) - set(own)
    if extra:
        raise UsageError(f"{path}: unexpected entries such as {sorted(extra)[0]!r}; the samples "
                         f"are not of --arch {arch}")


def load_sample_into(model, path, arch):
    state = load_state(path)
    check_state_matches(state, model, path, arch)
    model.load_state_dict(state, strict=False)
    return model


def param_vector_from_state(state, model):
    return torch.cat([state[name].reshape(-1).to(torch.float32)
                      for name, _ in model.named_parameters()])


def check_sample_range(save_dir, start, end, step=1):
    """The samples start, start+step, ... < end must all exist; the error says which epochs do."""
    have = available_samples(save_dir)
    if not have:
        raise UsageError(f"--save-dir {save_dir}: no samples (0.pt, 1.pt, ...) found; run "
                         "train_sgd.py with this --save-dir first")
    if start >= end:
        raise UsageError(f"--params_start {start} must be smaller than --params_end {end}")
    missing = [e for e in range(start, end, step) if e not in set(have)]
    if missing:
        raise UsageError(f"--params_end {end}: sample {missing[0]}.pt is missing from {save_dir}; "
                         f"samples present: {describe_epochs(have)}")


def load_sample_matrix(save_dir, model, start, end, arch, step=1):
    """(n, D) float32 matrix of the flattened parameters of samples start, start+step, ... < end."""
    rows = []
    for e in range(start, end, step):
        path = sample_path(save_dir, e)
        state = load_state(path)
        check_state_matches(state, model, path, arch)
        rows.append(param_vector_from_state(state, model))
    return torch.stack(rows)


@functools.lru_cache(maxsize=None)  # run.json and every results file ask; two git calls once
def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(args, num_classes):
    import torchvision
    return {
        "args": vars(args), "arch": args.arch, "datasets": args.datasets,
        "corrupt": args.corrupt, "randomseed": args.randomseed,
        "smalldatasets": args.smalldatasets, "num_classes": num_classes,
        "processes": world()[1],
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "git_commit": git_commit(), "host": platform.node(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def check_provenance(args):
    """The subspace scripts must use the samples' arch, dataset and label noise."""
    path = os.path.join(args.save_dir, "run.json")
    if not os.path.exists(path):
        return None  # samples from the authors' scripts carry no record
    with open(path) as f:
        record = json.load(f)
    for flag, key in (("--arch", "arch"), ("--datasets", "datasets"), ("--corrupt", "corrupt"),
                      ("--smalldatasets", "smalldatasets")):
        ours = getattr(args, key)
        if record.get(key) != ours:
            raise UsageError(f"{flag} {ours} differs from the samples in {args.save_dir}, which "
                             f"were made with {flag} {record.get(key)}")
    if args.corrupt > 0 and record.get("randomseed") != args.randomseed:
        raise UsageError(f"--randomseed {args.randomseed} differs from the samples' "
                         f"{record.get('randomseed')}: the noisy labels would differ")
    return record


class Results:
    """Per-epoch records of a run, rewritten atomically as JSON after every epoch."""

    def __init__(self, path, method, args, extra=None):
        self.path = path
        # The code and torch that made the numbers: floating-point rounding differs between them
        self.data = {"method": method, "args": vars(args), "git_commit": git_commit(),
                     "torch": torch.__version__, "epochs": []}
        self.data.update(extra or {})

    def add(self, **row):
        self.data["epochs"].append(row)
        self.save()

    def save(self):
        atomic_write_json(self.path, self.data)


def rng_state():
    np_state = np.random.get_state()
    state = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                       int(np_state[3]), float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_state(epoch, model, stateful, train_loader, best_prec1, results):
    """Everything an exact resume needs after ``epoch``; ``stateful`` maps names to objects with
    ``state_dict()`` (optimizer, scheduler, scaler, P-BFGS)."""
    state = {"epoch": epoch, "model": model.state_dict(),
             "loader_rng": train_loader.generator.get_state(), "rng": rng_state(),
             "best_prec1": best_prec1, "results": results.data["epochs"]}
    state.update({name: obj.state_dict() for name, obj in stateful.items()})
    return state


def resume_run(args, checkpoint_name, model, stateful, train_loader, results):
    """Restore what ``checkpoint_state`` saved; returns (epochs done, best Prec@1)."""
    path = find_resume_checkpoint(args, checkpoint_name)
    ckpt = safe_load(path)
    model.load_state_dict(ckpt["model"])
    for name, obj in stateful.items():
        obj.load_state_dict(ckpt[name])
    train_loader.generator.set_state(ckpt["loader_rng"])
    if hasattr(train_loader, "epoch"):  # a DistributedSampler's order depends on the epoch
        train_loader.epoch = ckpt["epoch"]
    set_rng_state(ckpt["rng"])
    results.data["epochs"] = ckpt["results"]
    log(f"=> resumed from {path} after epoch {ckpt['epoch']}")
    return ckpt["epoch"], ckpt["best_prec1"]


def find_resume_checkpoint(args, name):
    """Path of the checkpoint to resume from: --resume PATH, or the save dir's ``name``."""
    path = os.path.join(args.save_dir, name) if args.resume == "auto" else args.resume
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def check_writable_dir(folder, flag="--save-dir"):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot create it ({e.strerror})")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {folder}: not writable; choose another folder")


# ----------------------------------------------------------------------------------------------
# The DLDR basis
# ----------------------------------------------------------------------------------------------


def _check_components(n, n_components):
    if n_components > n - 1:
        raise UsageError(f"--n_components {n_components}: {n} samples span at most {n - 1} "
                         f"directions; use --n_components <= {n - 1} or more samples")


def _principal_directions(gram, n_components):
    """Top eigenpairs of the float64 Gram matrix of the centred samples, shared by both bases.

    Returns (vecs, scale, ratios): the (n, k) eigenvectors with deterministic signs, 1/sqrt of
    their eigenvalues (row i of the basis is scale[i] * vecs[:, i] @ centred samples) and the
    explained variance ratios.
    """
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    total = evals.clamp_min(0).sum()
    top, vecs = evals[:n_components], evecs[:, :n_components]
    if top[-1] <= total * 1e-14 or total <= 0:
        raise UsageError(f"--n_components {n_components}: the samples span fewer directions "
                         "(they are identical or nearly so); use fewer components")
    # Deterministic signs (PCA directions have none): each direction points from the first sample
    # towards the last, i.e. v[-1] - v[0] >= 0, decided on the n-vectors before the long pass.
    vecs = vecs * torch.where(vecs[-1] - vecs[0] < 0, -1.0, 1.0).to(vecs.dtype)
    return vecs, top.rsqrt(), top / total


def subspace_basis(samples, n_components, block=None):
    """Top principal directions of the centred samples, exactly (float64 Gram eigendecomposition).

    samples: (n, D) tensor. Returns (basis, explained_variance_ratio): basis is (k, D) float64 with
    orthonormal rows, ratios are the fractions of the total variance along each direction, as
    scikit-learn's PCA reports them. Columns are processed in blocks so the float64 working set
    stays small even for large D. ``streaming_subspace_basis`` gives the same basis from files.
    """
    n, dim = samples.shape
    _check_components(n, n_components)
    # On the CPU, blocks of 4k columns (81 samples: 2.6 MB in float64) stay in cache from the
    # conversion through the product, and one reused buffer spares the page faults of fresh
    # allocations: 81 ResNet-20 samples took 0.74 s as whole-matrix float64 copies, 0.44 s so.
    block = min(block or (1 << 20 if samples.is_cuda else 1 << 12), dim)
    buffer = torch.empty(n, block, dtype=torch.float64, device=samples.device)

    def centred(lo):  # float64 centred columns lo.., computed again for pass two (cheaper than kept)
        cols = buffer[:, :min(block, dim - lo)]
        cols.copy_(samples[:, lo:lo + block])
        cols -= cols.mean(0)
        return cols

    gram = torch.zeros(n, n, dtype=torch.float64, device=samples.device)
    for lo in range(0, dim, block):
        cols = centred(lo)
        gram.addmm_(cols, cols.T)
    vecs, scale, ratios = _principal_directions(gram, n_components)
    rows = vecs.T * scale[:, None]  # (k, n): basis row i = scale[i] * vecs[:, i] @ centred samples
    basis = torch.empty(n_components, dim, dtype=torch.float64, device=samples.device)
    for lo in range(0, dim, block):
        torch.mm(rows, centred(lo), out=basis[:, lo:lo + block])
    # The Gram route squares the condition number: re-orthonormalise the rows (same span, each row
    # keeps its direction) by Cholesky QR, one small Gram matrix and a triangular solve in place.
    chol = torch.linalg.cholesky(basis @ basis.T)
    torch.linalg.solve_triangular(chol, basis, upper=False, out=basis)
    return basis, ratios


def _read_columns(paths, layout, lo, out):
    """Columns lo..lo+width of the flattened parameters of every sample file, into out (n, width).

    Each file is mapped for this block only: pages read through a mapping count in the resident
    set until it is unmapped, so n files kept mapped would grow it to the size of all samples.
    """
    hi = lo + out.shape[1]
    for i, path in enumerate(paths):
        state = load_state(path, mmap=True)
        for name, offset, size in layout:
            a, b = max(lo, offset), min(hi, offset + size)
            if a < b:
                src = state[name].reshape(-1)[a - offset:b - offset]
                # float64 samples are rounded to float32 first, as load_sample_matrix does
                out[i, a - lo:b - lo].copy_(src.float() if src.dtype == torch.float64 else src)
                del src
        del state  # the last reference to the mapping: munmap


def _centred_chunks(paths, layout, dim, buffer, chunk):
    """(first column, float64 centred columns) of all samples, `chunk` columns at a time, read
    from the files a buffer's width at a time."""
    width = buffer.shape[1]
    for lo in range(0, dim, width):
        block = buffer[:, :min(width, dim - lo)]
        _read_columns(paths, layout, lo, block)
        for c in range(0, block.shape[1], chunk):
            cols = block[:, c:c + chunk].double()
            cols -= cols.mean(0)
            yield lo + c, cols


def streaming_subspace_basis(paths, model, n_components, *, arch=None, working_bytes=1 << 30,
                             dtype=torch.float32):
    """``subspace_basis`` of sample files without holding the samples in memory.

    paths: sample files (model state dicts as save_sample writes them); model gives the parameter
    names, order and shapes, as for load_sample_matrix. Returns (basis, explained_variance_ratio)
    like subspace_basis: the same Gram matrix, eigenvectors, signs and Cholesky-QR, computed in
    float64, but with the samples read from memory-mapped files one column block at a time (two
    passes over the files: the Gram matrix, then the basis rows). Peak memory is the (k, D) basis
    plus about ``working_bytes`` (a float32 (n, width) read buffer and float64 temporaries),
    whatever the number of samples. The basis is returned as ``dtype``, float32 by default: the
    training uses it in the parameters' float32 anyway, and it halves the largest allocation
    (5.8 GB instead of 11.7 GB for 40 directions of WRN-28-10); rows then agree with the float64
    basis to float32 rounding.
    """
    arch = arch or type(model).__name__
    n = len(paths)
    _check_components(n, n_components)
    for path in paths:  # every file checked before the long passes
        check_state_matches(load_state(path, mmap=True), model, path, arch)
    layout, dim = [], 0
    for name, p in model.named_parameters():
        layout.append((name, dim, p.numel()))
        dim += p.numel()
    # Compute in chunks of `chunk` columns (float64: centred samples, rows, solve output), read in
    # blocks of `width` columns: each file is opened once per block (~25 ms for a WRN-28-10 state
    # dict through the weights-only unpickler), so the blocks are as wide as the budget allows.
    chunk = max(1, min(1 << 16, dim, working_bytes // 8 // (8 * n + 16 * n_components)))
    temporaries = chunk * (8 * n + 16 * n_components)
    # per column: the float32 buffer entry of each sample plus the mapped page of the file in use
    width = max(chunk, min(dim, (working_bytes - temporaries) // (4 * n + 4)))
    buffer = torch.empty(n, width, dtype=torch.float32)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for _, cols in _centred_chunks(paths, layout, dim, buffer, chunk):
        gram += cols @ cols.T
    vecs, scale, ratios = _principal_directions(gram, n_components)
    basis = torch.empty(n_components, dim, dtype=dtype)
    row_gram = torch.zeros(n_components, n_components, dtype=torch.float64)
    for lo, cols in _centred_chunks(paths, layout, dim, buffer, chunk):
        rows = vecs.T @ cols
        rows *= scale[:, None]
        row_gram += rows @ rows.T  # of the float64 rows, as subspace_basis's Cholesky QR
        basis[:, lo:lo + rows.shape[1]] = rows
    del buffer, cols, rows
    chol = torch.linalg.cholesky(row_gram)
    for lo in range(0, dim, chunk):  # the Cholesky-QR correction, in place
        part = basis[:, lo:lo + chunk]
        part.copy_(torch.linalg.solve_triangular(chol, part.double(), upper=False))
    return basis, ratios


def random_basis(dim, n_components, seed, dtype=torch.float64):
    """An orthonormal (k, D) basis spanning a uniformly random k-dimensional subspace."""
    g = torch.Generator().manual_seed(seed)
    gauss = torch.randn(dim, n_components, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    return q.T.contiguous().to(dtype)


# ----------------------------------------------------------------------------------------------
# Flat parameter vectors
# ----------------------------------------------------------------------------------------------


def trainable_parameters(model):
    return [p for _, p in model.named_parameters() if p.requires_grad]


class FlatParameters:
    """A model's trainable parameters (and their gradients) as views into one flat buffer each.

    Projections and updates then act on ``self.data`` / ``self.grad`` as single vectors, without
    concatenating per step. Create it after moving the model to its device and dtype.
    """

    def __init__(self, model):
        params = trainable_parameters(model)
        if len({(p.dtype, p.device) for p in params}) != 1:
            raise ValueError("all trainable parameters must share one dtype and device")
        total = sum(p.numel() for p in params)
        self.data = torch.empty(total, dtype=params[0].dtype, device=params[0].device)
        self.grad = torch.zeros_like(self.data)
        offset = 0
        for p in params:
            n = p.numel()
            self.data[offset:offset + n].copy_(p.data.reshape(-1))
            p.data = self.data[offset:offset + n].view_as(p)
            p.grad = self.grad[offset:offset + n].view_as(p)
            offset += n
        self.params = params

    def zero_grad(self):
        self.grad.zero_()

    def check_views(self):
        """True while every .grad is still a view of the flat buffer (no one replaced it)."""
        base = self.grad.untyped_storage().data_ptr()
        return all(p.grad is not None and p.grad.untyped_storage().data_ptr() == base
                   for p in self.params)


def flat_grad(model):
    # A parameter the loss does not reach (e.g. NASNet's unused adapters) has grad None: zeros.
    return torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) if p.grad is None
                      else p.grad.reshape(-1) for p in trainable_parameters(model)])


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model)])


def set_flat_params_(model, vector):
    offset = 0
    with torch.no_grad():
        for p in trainable_parameters(model):
            p.copy_(vector[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def set_flat_grad_(model, vector):
    offset = 0
    for p in trainable_parameters(model):
        piece = vector[offset:offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += p.numel()


# ----------------------------------------------------------------------------------------------
# Meters, evaluation, per-epoch progress
# ----------------------------------------------------------------------------------------------


class AverageMeter:
    def __init__(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / max(self.count, 1)


def correct_count(output, target):
    return (output.argmax(1) == target).sum()


class EpochProgress:
    """The authors' progress line, ``Epoch: [e][i/n] Time .. Loss .. Prec@1 ..``, plus img/s and ETA.

    Loss and accuracy are accumulated on the device and read back only at print time, so a fast
    GPU step is not stalled by a host synchronisation every iteration.
    """

    def __init__(self, epoch, num_batches, print_freq, epochs_left_after=0, header="Epoch"):
        self.epoch, self.n, self.print_freq = epoch, num_batches, print_freq
        self.epochs_left_after = epochs_left_after
        self.header = header
        self.start = self.last = time.time()
        self.loss_sum = self.correct = None
        self.seen = 0
        self.batch_time = AverageMeter()
        self.processes = world()[1]  # img/s counts every process (rank 0's count times this)

    def update(self, i, loss, output, target):
        n = target.shape[0]
        loss_sum = loss.detach().float() * n
        correct = correct_count(output.detach(), target)
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.correct = correct if self.correct is None else self.correct + correct
        self.seen += n
        if i % self.print_freq == 0 or i == self.n - 1:
            now = time.time()
            elapsed = now - self.start
            done = i + 1
            self.batch_time.update((now - self.last) / max(done - self.batch_time.count, 1),
                                   done - self.batch_time.count)
            self.last = now
            per_batch = elapsed / done
            eta = per_batch * (self.n - done) + per_batch * self.n * self.epochs_left_after
            log(f"{self.header}: [{self.epoch}][{i}/{self.n}]\t"
                f"Time {self.batch_time.val:.3f} ({per_batch:.3f})\t"
                f"Loss {loss.item():.4f} ({self.loss:.4f})\t"
                f"Prec@1 {100.0 * correct.item() / n:.3f} ({self.accuracy:.3f})\t"
                f"{self.seen * self.processes / max(elapsed, 1e-9):.0f} img/s\tETA {format_eta(eta)}")

    def finish(self):
        """End of the epoch: under torchrun, loss, accuracy and images seen become the totals
        over all processes (the progress lines during the epoch show rank 0's share)."""
        if world()[1] > 1:
            device = self.loss_sum.device if self.loss_sum is not None else None
            totals = torch.tensor([0.0 if self.loss_sum is None else self.loss_sum.item(),
                                   0.0 if self.correct is None else float(self.correct.item()),
                                   float(self.seen)], dtype=torch.float64, device=device)
            loss_sum, correct, seen = all_reduce_sum_(totals).tolist()
            self.loss_sum, self.correct = torch.tensor(loss_sum), torch.tensor(correct)
            self.seen = int(seen)
        return self

    @property
    def loss(self):
        return self.loss_sum.item() / max(self.seen, 1) if self.seen else float("nan")

    @property
    def accuracy(self):
        return 100.0 * self.correct.item() / max(self.seen, 1) if self.seen else 0.0

    def check_finite(self, loss, i):
        if not torch.isfinite(loss).item():
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {self.epoch}, step {i}")


class NonFiniteLoss(RuntimeError):
    pass


@torch.no_grad()
def evaluate(model, loader, amp=None):
    """(mean loss, top-1 accuracy in %) over a loader, model in eval mode."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    loss_acc = torch.zeros((), dtype=torch.float64)
    correct_acc = torch.zeros((), dtype=torch.int64)
    for x, y in loader:
        with autocast(x.device, amp):
            out = model(x)
        loss_acc = loss_acc.to(out.device) + F.cross_entropy(full_precision(out), y, reduction="sum").double()
        correct_acc = correct_acc.to(out.device) + correct_count(out, y)
        seen += y.shape[0]
    model.train()
    loss_sum, correct = loss_acc.item(), correct_acc.item()
    if world()[1] > 1:  # each process evaluated its shard of the test set
        totals = torch.tensor([loss_sum, float(correct), float(seen)], dtype=torch.float64,
                              device=next(model.parameters()).device)
        loss_sum, correct, seen = all_reduce_sum_(totals).tolist()
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def autocast(device, amp):
    """bf16/fp16 autocast on the device when asked, else a no-op context."""
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def log_test(prec, loss):
    log(f" * Prec@1 {prec:.3f}\tLoss {loss:.4f}")


def compile_model(model, args, device):
    """``--compile``: the module that runs forward passes; ``model`` keeps the parameters and state."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if not args.compile:
        return model
    backend = getattr(args, "compile_backend", "inductor")
    if backend != "inductor":
        return torch.compile(model, backend=backend)  # modes are inductor options
    # CUDA graphs for the fixed-shape steps; not under torchrun, where DDP's gradient all-reduce
    # hooks run inside the backward pass (untested with graph capture, so left out by default).
    graphs = device.type == "cuda" and world()[1] == 1
    mode = args.compile_mode or ("reduce-overhead" if graphs else None)
    return torch.compile(model, mode=mode)


def mark_step(args, device):
    """With CUDA graphs, tell torch that a new training iteration begins (outputs may be reused)."""
    if args.compile and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def new_model(arch, datasets, num_classes):
    """A fresh ``arch``: torchvision's ImageNet model for ImageNet/folder (as the authors), else
    the CIFAR-style one of our registry (``resnet18`` differs between the two)."""
    check_arch_name(arch, datasets)
    if datasets in FOLDER_DATASETS:
        import torchvision
        # Without pretrained weights these two default to an auxiliary head (a tuple output).
        extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet",
                                                                        "inception_v3") else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    return models.build(arch, num_classes)


def build_model(args, num_classes, device):
    model = new_model(args.arch, args.datasets, num_classes).to(device)
    if getattr(args, "dtype", "float32") == "float64":
        # --dtype float64: parameters in double precision, and inputs cast on the way in.
        model = model.double()
        model.register_forward_pre_hook(lambda module, inputs: tuple(
            x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs))
    return model


def full_precision(output):
    """Logits for the loss: low-precision (autocast) outputs in float32, others as they are."""
    return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output


def torchvision_arch_names():
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)  # classification only


def check_arch_name(arch, datasets=None):
    if datasets in FOLDER_DATASETS:
        if arch not in torchvision_arch_names():
            raise UsageError(f"unknown --arch {arch!r} for --datasets {datasets}, which takes "
                             "torchvision's ImageNet architectures, e.g. resnet18, resnet50, "
                             "vgg16_bn, mobilenet_v2 (all: torchvision.models.list_models())")
    elif arch not in models.names():
        raise UsageError(f"unknown --arch {arch!r}; known: {', '.join(models.names())}")


# ----------------------------------------------------------------------------------------------
# Shared set-up of the two subspace scripts
# ----------------------------------------------------------------------------------------------


STREAMING_BASIS_BYTES = 2 << 30  # float32 sample matrices above this use the streaming basis


def subspace_sample_epochs(args):
    """The samples that build the basis: params_start, params_start+params_step, ... < params_end."""
    return list(range(args.params_start, args.params_end, args.params_step))


def describe_sample_epochs(args):
    """'0..80', or '0..80 step 2' when --params_step skips samples."""
    text = f"{args.params_start}..{subspace_sample_epochs(args)[-1]}"
    return text if args.params_step == 1 else f"{text} step {args.params_step}"


def validate_subspace_args(args, checkpoint_name):
    """Every check that needs no heavy work, before anything is loaded or written."""
    check_arch_name(args.arch, args.datasets)
    check_dataset_name(args.datasets, args.data_root)
    device = resolve_device(args.device)
    if args.params_start >= args.params_end:
        raise UsageError(f"--params_start {args.params_start} must be smaller than "
                         f"--params_end {args.params_end}")
    check_sample_range(args.save_dir, args.params_start, args.params_end, args.params_step)
    n = len(subspace_sample_epochs(args))
    if args.basis == "dldr" and args.n_components >= n:
        raise UsageError(f"--n_components {args.n_components}: {n} samples "
                         f"({describe_sample_epochs(args)}) span at most {n - 1} directions; use "
                         f"--n_components <= {n - 1} or a wider sample range"
                         + (" or a smaller --params_step" if args.params_step > 1 else ""))
    if args.resume:
        find_resume_checkpoint(args, checkpoint_name)
    check_provenance(args)
    if not os.access(args.save_dir, os.W_OK):
        raise UsageError(f"--save-dir {args.save_dir}: not writable; choose another folder")
    check_precision(args)
    return device


def check_precision(args):
    if args.half:
        args.amp = args.amp or "fp16"
    if args.amp and args.dtype == "float64":
        raise UsageError(f"--dtype float64 and --amp {args.amp} (or --half) contradict each other; "
                         "choose one")


def prepare_subspace_run(args, device):
    """Model at sample params_start, the (k, D) basis on the device, and the data loaders."""
    train_set, test_set = load_data(args)
    num_classes = train_set.num_classes
    model = build_model(args, num_classes, device)
    start = time.time()
    dim = sum(p.numel() for p in trainable_parameters(model))
    if args.basis == "dldr":
        epochs = subspace_sample_epochs(args)
        streaming = args.streaming_basis or len(epochs) * dim * 4 > STREAMING_BASIS_BYTES
        if streaming:  # host memory: the basis plus ~1 GiB, not all samples; moved to device below
            paths = [sample_path(args.save_dir, e) for e in epochs]
            # float32 unless the parameters are float64 (--dtype float64): the training's dtype
            wide = trainable_parameters(model)[0].dtype == torch.float64
            basis, ratios = streaming_subspace_basis(
                paths, model, args.n_components, arch=args.arch,
                dtype=torch.float64 if wide else torch.float32)
        else:
            samples = load_sample_matrix(args.save_dir, model, args.params_start, args.params_end,
                                         args.arch, args.params_step)
            basis, ratios = subspace_basis(samples.to(device), args.n_components)
            del samples
        ratios = ratios.tolist()
        log(f"=> DLDR basis{' (streaming)' if streaming else ''}: {args.n_components} directions "
            f"from {len(epochs)} samples {describe_sample_epochs(args)} in "
            f"{time.time() - start:.2f} s; explained variance {sum(ratios):.4f} "
            f"(top 5: {', '.join(f'{r:.4f}' for r in ratios[:5])})")
    else:
        basis, ratios = random_basis(dim, args.n_components, args.randomseed).to(device), None
        log(f"=> random basis: {args.n_components} orthonormal directions (seed {args.randomseed})")
    load_sample_into(model, sample_path(args.save_dir, args.params_start), args.arch)
    model = sync_batchnorm(model, device)  # under torchrun: statistics of the global batch
    basis = basis.to(device=device, dtype=trainable_parameters(model)[0].dtype).contiguous()
    train_loader = make_loader(train_set, args, device, shuffle=True, seed=args.randomseed)
    test_loader = make_loader(test_set, args, device, shuffle=False)
    return model, basis, ratios, train_loader, test_loader


def subspace_output_names(args, method):
    """(results file, final model file, checkpoint file) of a subspace run in the save dir."""
    model = method.upper() + ("" if args.basis == "dldr" else "_random")
    tag = method + ("" if args.basis == "dldr" else "_random")
    suffix = f"_{args.output_tag}" if getattr(args, "output_tag", None) else ""
    return f"results_{tag}{suffix}.json", f"{model}{suffix}.pt", f"checkpoint_{tag}{suffix}.pt"
