"""Datasets: whole splits in memory (CIFAR, DIGITS, synthetic) or image folders on disk (ImageNet,
folder), with --smalldatasets and --corrupt applied the same way in every script."""
import functools
import gzip
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

from .cli import UsageError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The authors' CIFAR-100 statistics, digit for digit as their utils.py wrote them
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)


class ImageSet:
    """A whole split in memory: uint8 images (N, 3, H, W), int64 labels, normalisation, augmentation.

    ``noise`` is the label-noise record of a training split with --corrupt (else None).
    """

    def __init__(self, images, labels, num_classes, mean, std, augment, noise=None):
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.mean, self.std = mean, std
        self.augment = augment
        self.noise = noise

    def __len__(self):
        return len(self.labels)

    def subset(self, n):
        return ImageSet(self.images[:n], self.labels[:n], self.num_classes, self.mean, self.std,
                        self.augment)

    def with_labels(self, labels, noise=None):
        return ImageSet(self.images, labels, self.num_classes, self.mean, self.std, self.augment,
                        noise)


def _missing_folders(root):
    """The folders of the path ``root`` that do not exist yet, the topmost first."""
    missing, path = [], os.path.abspath(root)
    while path and not os.path.exists(path):
        missing.insert(0, path)
        parent = os.path.dirname(path)
        path = parent if parent != path else None
    return missing


def _remove_if_empty(folders):
    """After a failed download: the folders in ``folders`` (made by it, the topmost first) go
    again when nothing but empty folders and empty files (a download that never started) is in
    them."""
    if not folders or not os.path.isdir(folders[0]):
        return
    for here, _, names in os.walk(folders[0], topdown=False):
        for name in names:
            path = os.path.join(here, name)
            if os.path.getsize(path) == 0:
                os.unlink(path)
        if not os.listdir(here):
            os.rmdir(here)


def read_or_download(root, what, make, offline):
    """``make()`` (torchvision's dataset, which downloads it when absent), or one line naming the
    folder, the error and ``offline`` (how to put the files there by hand); a failed download
    leaves no folder it made behind."""
    created = _missing_folders(root)
    try:
        return make()
    except Exception as e:  # download or archive failure
        _remove_if_empty(created)
        error = " ".join(str(e).split())  # torchvision's may span lines
        raise UsageError(f"--data-root {root}: cannot read or download {what} ({error}); {offline}")


def _cifar(train, root, cls, mean, std):
    where = os.path.abspath(root)
    ds = read_or_download(
        root, cls.__name__, lambda: cls(root=root, train=train, download=True),
        f"without internet, put {cls.filename} (from {cls.url}, md5 {cls.tgz_md5}) or its "
        f"extracted {cls.base_folder}/ in {where}/")
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


def load_mnist(train, root):
    """torchvision's MNIST, as 3x32x32 images for the CIFAR architectures: the 28x28 digits with a
    2-pixel zero border, repeated over 3 channels; not normalised (the authors' ToTensor alone)."""
    import torchvision
    cls = torchvision.datasets.MNIST
    ds = read_or_download(
        root, "MNIST", lambda: cls(root=root, train=train, download=True),
        f"without internet, put {', '.join(name for name, _ in cls.resources)} (from "
        f"{cls.mirrors[0]}) in {os.path.join(os.path.abspath(root), 'MNIST', 'raw')}/")
    images = F.pad(ds.data, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()
    return ImageSet(images, ds.targets.to(torch.int64), 10, (0.0,) * 3, (1.0,) * 3, augment=False)


# The test images of DIGITS: sklearn's train_test_split(test_size=360, stratify=target,
# random_state=0), frozen as a 1797-bit mask (hex, most significant bit first) so that the split
# does not change with the scikit-learn version. tests/test_data.py checks it against
# train_test_split.
_DIGITS_TEST_MASK = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a0"
    "00080a8820441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020e"
    "c409000224840083a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a810216004"
    "480004042a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380803c00819000010"
    "0e01008410a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c0282024"
    "2120138a41500")


@functools.lru_cache(maxsize=1)
def digits_arrays():
    """(images (1797, 64) float64, labels) of scikit-learn's bundled digits. Read from its data
    file as its ``load_digits`` reads it, without importing scikit-learn, whose import costs every
    process seconds (BENCHMARKS.md); its own loader where the file is not in the usual place."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None:
        raise UsageError("--datasets DIGITS needs scikit-learn; pip install scikit-learn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits as sklearn_digits
        return sklearn_digits(return_X_y=True)
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def load_digits(train, root=None):
    """scikit-learn's bundled 8x8 digits, resized to 3x32x32; a fixed stratified 1437/360 split."""
    images, labels = digits_arrays()
    x = torch.tensor(images.reshape(-1, 8, 8), dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
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
    with_labels, mean/std, augment, noise), so --smalldatasets and --corrupt work unchanged.
    """

    def __init__(self, paths, labels, classes, augment, noise=None):
        # One numpy bytes array, not a list of str: forked DataLoader workers then share the pages
        # instead of copying them on every refcount touch (1.28M paths for ImageNet).
        self.paths = np.asarray(paths, dtype=np.bytes_)
        self.labels = labels
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.augment = augment
        self.noise = noise

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

    def with_labels(self, labels, noise=None):
        return FolderSet(self.paths, labels, self.classes, self.augment, noise)


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
    "MNIST": load_mnist,
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


def load_data(name, root, smalldatasets=None, corrupt=0.0, seed=1):
    """(train, test) of dataset ``name`` after --smalldatasets and --corrupt.

    With label noise, ``train.noise`` records the chosen indices and their new labels (the SGD run
    writes it beside its samples; the subspace runs check theirs against it).
    """
    check_dataset_name(name)
    read = DATASETS[name]
    train, test = read(True, root), read(False, root)
    if smalldatasets is not None:
        n = int(len(train) * smalldatasets)
        if n < 1:
            raise UsageError(f"--smalldatasets {smalldatasets} leaves no training image")
        train = train.subset(n)
    if corrupt > 0:
        labels, chosen = noisy_labels(train.labels, corrupt, train.num_classes, seed)
        noise = {"corrupt": corrupt, "randomseed": seed, "num_classes": train.num_classes,
                 "num_train": len(train), "changed": int((labels != train.labels).sum()),
                 "indices": chosen.tolist(), "labels": labels[chosen].tolist()}
        train = train.with_labels(labels, noise)
    return train, test
