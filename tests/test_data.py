"""Datasets, label noise and the device augmentation path."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import utils
from conftest import write_cifar, write_mnist


def test_digits_is_a_fixed_stratified_1437_360_split():
    train, test = utils.load_digits(True), utils.load_digits(False)
    assert len(train) == 1437 and len(test) == 360
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    again = utils.load_digits(False)
    assert torch.equal(test.images, again.images) and torch.equal(test.labels, again.labels)


def test_digits_split_is_sklearns_train_test_split():
    """The split is frozen as a mask so that it does not change with scikit-learn's version: it
    must be what load_digits and train_test_split(stratify, random_state=0) give."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ref = load_digits()
    train_idx, test_idx = train_test_split(np.arange(len(ref.target)), test_size=360,
                                           stratify=ref.target, random_state=0)
    for train, idx in ((True, train_idx), (False, test_idx)):
        ours = utils.load_digits(train).labels
        assert torch.equal(ours, torch.from_numpy(ref.target[np.sort(idx)])), (
            "the frozen split differs from this scikit-learn's train_test_split: if sklearn changed "
            "its algorithm, the frozen mask is still the project's split; check the version first")
    # The test images are exactly the sklearn split's (labels alone could coincide).
    x = torch.tensor(ref.images[np.sort(test_idx)], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    assert torch.equal(utils.load_digits(False).images, x)


def test_digits_are_read_as_sklearns_load_digits_gives_them(monkeypatch):
    """DIGITS is parsed from scikit-learn's data file without importing scikit-learn: the arrays
    must be its load_digits' to the bit, and its own loader is used where the file is missing."""
    from sklearn.datasets import load_digits
    from dldr import data

    ref_images, ref_labels = load_digits(return_X_y=True)
    data.digits_arrays.cache_clear()
    images, labels = data.digits_arrays()
    assert images.dtype == ref_images.dtype and np.array_equal(images, ref_images)
    assert labels.dtype == ref_labels.dtype and np.array_equal(labels, ref_labels)
    data.digits_arrays.cache_clear()
    monkeypatch.setattr(data.os.path, "isfile", lambda path: False)
    fallback_images, fallback_labels = data.digits_arrays()
    data.digits_arrays.cache_clear()
    assert np.array_equal(fallback_images, ref_images) and np.array_equal(fallback_labels, ref_labels)


def test_noisy_labels_fraction_uniformity_and_determinism():
    labels = torch.zeros(20000, dtype=torch.int64)
    new, chosen = utils.noisy_labels(labels, 0.3, 100, seed=5)
    again, chosen2 = utils.noisy_labels(labels, 0.3, 100, seed=5)
    other, _ = utils.noisy_labels(labels, 0.3, 100, seed=6)
    assert torch.equal(new, again) and np.array_equal(chosen, chosen2)
    assert not torch.equal(new, other)
    assert len(chosen) == 6000
    untouched = np.setdiff1d(np.arange(20000), chosen)
    assert (new[untouched] == 0).all()
    # Drawn from all 100 classes (the authors drew from 10 even on CIFAR-100).
    hist = torch.bincount(new[chosen], minlength=100)
    assert hist.numel() == 100 and hist.min() > 30 and hist.max() < 95


def test_noise_record_written_and_checked(tmp_path):
    train, _ = utils.load_data("DIGITS", None, corrupt=0.2, seed=1)
    utils.save_noise_record(str(tmp_path), train.noise)
    record = json.load(open(tmp_path / "noisy_labels.json"))
    clean = utils.load_digits(True).labels
    changed = torch.nonzero(train.labels != clean).flatten().tolist()
    assert set(changed) <= set(record["indices"]) and len(record["indices"]) == round(0.2 * 1437)
    assert record["changed"] == len(changed)
    # The other scripts recompute the same labels and check them against the record.
    train2, _ = utils.load_data("DIGITS", None, corrupt=0.2, seed=1)
    assert torch.equal(train.labels, train2.labels)
    utils.check_noise_record(str(tmp_path), train2.noise)
    other, _ = utils.load_data("DIGITS", None, corrupt=0.2, seed=2)
    with pytest.raises(utils.UsageError, match="noisy labels"):
        utils.check_noise_record(str(tmp_path), other.noise)


def test_smalldatasets_takes_the_first_fraction():
    train, _ = utils.load_data("DIGITS", None, smalldatasets=0.25)
    full = utils.load_digits(True)
    assert len(train) == int(1437 * 0.25)
    assert torch.equal(train.images, full.images[:len(train)])


def test_crop_flip_equals_torchvision_for_the_same_offsets():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    top, left = torch.randint(9, (16,), generator=g), torch.randint(9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    ours = utils.crop_flip(padded, top, left, flip)
    for i in range(16):
        ref = TF.crop(TF.pad(images[i], [4]), int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(ours[i], ref)


def test_memory_loader_augmentation_distribution():
    """Offsets uniform over the 9x9 positions and flips at 1/2, like RandomCrop + RandomHorizontalFlip."""
    n = 9000
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, :, 0, 0] = 255  # a marker pixel: its position reveals the crop and the flip
    data = utils.ImageSet(images, torch.zeros(n, dtype=torch.int64), 10, (0.0,) * 3, (1.0,) * 3, True)
    loader = utils.MemoryLoader(data, 1000, torch.device("cpu"), shuffle=True, seed=1)
    positions = []
    for x, _ in loader:
        hits = (x[:, 0] > 0.5).nonzero()
        positions.append(hits)
    pos = torch.cat(positions)
    seen_rows, seen_cols = pos[:, 1], pos[:, 2]
    # The marker is visible when the crop starts at or before it: rows 0..4 -> row 4 - top.
    visible = len(pos) / n
    assert abs(visible - 25 / 81) < 0.03
    assert set(seen_rows.tolist()) == set(range(5))
    row_freq = torch.bincount(seen_rows, minlength=5).float() / len(pos)
    assert (row_freq - 0.2).abs().max() < 0.03  # each crop offset equally likely
    flipped = (seen_cols > 15).float().mean().item()
    assert abs(flipped - 0.5) < 0.05


def test_memory_loader_same_seed_same_batches():
    data = utils.load_synthetic(True, n_train=500)
    a = [x for x, _ in utils.MemoryLoader(data, 100, torch.device("cpu"), True, seed=3)]
    b = [x for x, _ in utils.MemoryLoader(data, 100, torch.device("cpu"), True, seed=3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_through_torchvision_on_a_small_archive(tmp_path, monkeypatch, cifar100):
    x, y = write_cifar(tmp_path / "data", cifar100, monkeypatch)
    name = "CIFAR100" if cifar100 else "CIFAR10"
    train, test = utils.load_data(name, str(tmp_path / "data"), corrupt=0.5, seed=1)
    utils.save_noise_record(str(tmp_path), train.noise)
    assert len(train) == 50 and len(test) == 20 and train.num_classes == (100 if cifar100 else 10)
    assert torch.equal(train.images, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
    assert train.augment and not test.augment
    expected_mean = utils.CIFAR100_MEAN if cifar100 else utils.IMAGENET_MEAN
    assert train.mean == expected_mean
    clean = torch.tensor(y)
    record = json.load(open(tmp_path / "noisy_labels.json"))
    assert record["num_classes"] == train.num_classes and len(record["indices"]) == 25
    assert torch.equal(train.labels[record["indices"]], torch.tensor(record["labels"]))
    untouched = np.setdiff1d(np.arange(50), record["indices"])
    assert torch.equal(train.labels[untouched], clean[untouched])
    # Batches are normalised with the dataset's statistics and augmented.
    loader = utils.make_loader(train, 64, torch.device("cpu"), shuffle=True, seed=0)
    xb, yb = next(iter(loader))
    assert xb.shape == (50, 3, 32, 32) and xb.dtype == torch.float32


# The authors' constants as their utils.py wrote them (CIFAR-10 takes ImageNet's, as theirs)
AUTHORS_NORMALIZE = {"CIFAR100": ([0.5070751592371323, 0.48654887331495095, 0.4409178433670343],
                                  [0.2673342858792401, 0.2564384629170883, 0.27615047132568404]),
                     "CIFAR10": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


@pytest.mark.parametrize("cifar100", [False, True])
def test_cifar_inputs_equal_the_authors_totensor_normalize_bit_for_bit(tmp_path, monkeypatch,
                                                                       cifar100):
    import torchvision
    import torchvision.transforms as T
    write_cifar(tmp_path / "data", cifar100, monkeypatch)
    name = "CIFAR100" if cifar100 else "CIFAR10"
    mean, std = AUTHORS_NORMALIZE[name]
    theirs = getattr(torchvision.datasets, name)(
        root=str(tmp_path / "data"), train=False,
        transform=T.Compose([T.ToTensor(), T.Normalize(mean=mean, std=std)]))
    expected = torch.stack([theirs[i][0] for i in range(len(theirs))])
    _, test = utils.load_data(name, str(tmp_path / "data"))
    for kind in ("memory", "dataloader"):
        ours = torch.cat([x for x, _ in utils.make_loader(test, 128, torch.device("cpu"), False,
                                                          kind=kind, workers=0)])
        assert torch.equal(ours, expected), kind


@pytest.mark.parametrize("name", ["CIFAR10", "CIFAR100", "MNIST"])
def test_a_failed_download_is_one_line_naming_the_files_and_leaves_no_folder(tmp_path, monkeypatch,
                                                                            name):
    import torchvision.datasets as tvd
    # A download that fails on any machine, with or without internet
    nowhere = (tmp_path / "no-server").as_uri() + "/"
    if name == "MNIST":
        monkeypatch.setattr(tvd.MNIST, "mirrors", [nowhere])
    else:
        cls = getattr(tvd, name)
        monkeypatch.setattr(cls, "url", nowhere + cls.filename)
    root = tmp_path / "new" / "data"
    with pytest.raises(utils.UsageError) as e:
        utils.load_data(name, str(root))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"--data-root {root}: cannot read or download")
    archive = {"CIFAR10": "cifar-10-python.tar.gz", "CIFAR100": "cifar-100-python.tar.gz",
               "MNIST": "train-images-idx3-ubyte.gz"}[name]
    where = f"{root}/MNIST/raw/" if name == "MNIST" else f"{root}/"
    assert f"without internet, put {archive}" in message and message.endswith(f" in {where}")
    assert not (tmp_path / "new").exists()  # the folders the download made are gone


def test_the_cifar_archive_put_where_the_message_says_is_read_offline(tmp_path, monkeypatch):
    """What the offline message asks for works: the archive in --data-root, no download."""
    import hashlib
    import tarfile
    import torchvision.datasets as tvd
    made = tmp_path / "made"
    images, labels = write_cifar(made, False, monkeypatch)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / tvd.CIFAR10.filename, "w:gz") as tar:
        tar.add(made / tvd.CIFAR10.base_folder, arcname=tvd.CIFAR10.base_folder)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", hashlib.md5(
        (root / tvd.CIFAR10.filename).read_bytes()).hexdigest())
    monkeypatch.setattr(tvd.CIFAR10, "url", (tmp_path / "no-server").as_uri() + "/x.tar.gz")
    train, _ = utils.load_data("CIFAR10", str(root))
    assert train.labels.tolist() == labels and len(train) == len(images)


def test_dataloader_path_equals_memory_path_without_augmentation():
    data = utils.load_digits(False)
    cpu = torch.device("cpu")
    dl = [x for x, _ in utils.make_loader(data, 100, cpu, False, kind="dataloader", workers=0)]
    mem = [x for x, _ in utils.make_loader(data, 100, cpu, False, kind="memory")]
    assert len(dl) == len(mem)
    for a, b in zip(dl, mem):  # operation for operation: the same inputs, bit for bit
        assert torch.equal(a, b)


def test_mnist_through_torchvision_on_a_small_raw_archive(tmp_path):
    """MNIST's 1x28x28 digits become 3x32x32 images (a 2-pixel zero border, the channel repeated)
    for the CIFAR architectures; label noise and small subsets apply as for CIFAR."""
    images, labels = write_mnist(tmp_path / "data", n_train=40, n_test=12)
    train, test = utils.load_data("MNIST", str(tmp_path / "data"), smalldatasets=0.5, corrupt=0.5,
                                  seed=2)
    assert len(train) == 20 and len(test) == 12 and train.num_classes == 10
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 1, 2:30, 2:30], torch.from_numpy(images[:20]))
    assert train.images[:, :, :2].sum() == 0 and torch.equal(train.images[:, 0], train.images[:, 2])
    assert len(train.noise["indices"]) == 10
    assert not train.augment  # the authors' MNIST had no augmentation
    batch, _ = next(iter(utils.make_loader(test, 12, torch.device("cpu"), False)))
    assert torch.equal(batch, test.images.float() / 255)  # ToTensor alone, as the authors
