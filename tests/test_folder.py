"""--datasets ImageNet / folder: an ImageFolder of generated JPEGs through the real scripts."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import utils
from conftest import run_here, sigterm_during_step

CLASSES = ("ant", "bee", "cat")
ARCH = "shufflenet_v2_x0_5"  # torchvision's cheapest ImageNet model: 224x224 inputs on 2 CPU cores


def make_image_folder(root, n_train=4, n_val=1):
    """root/{train,val}/CLASS/i.jpg: random RGB images of random sizes (some below 224, to resize)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in CLASSES:
            os.makedirs(os.path.join(root, split, c))
            for i in range(n):
                h, w = rng.integers(20, 300, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, c, f"{i}.jpg"))
    return root


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return str(make_image_folder(tmp_path_factory.mktemp("folder") / "data"))


def test_imagenet_reads_the_folders_as_224_crops_with_the_folder_classes(image_folder, tmp_path):
    train, test = utils.load_data("ImageNet", image_folder, corrupt=0.5, seed=1)
    assert train.classes == list(CLASSES) and train.num_classes == 3
    assert utils.folder_classes("ImageNet", image_folder) == list(CLASSES)  # without a scan
    assert len(train) == 12 and len(test) == 3
    assert test.labels.tolist() == [0, 1, 2]
    clean = torch.arange(3).repeat_interleave(4)
    assert torch.equal(train.labels, utils.noisy_labels(clean, 0.5, 3, 1)[0])  # --corrupt applies
    cpu = torch.device("cpu")
    train_loader = utils.make_loader(train, 4, cpu, True, workers=0, seed=1)  # --loader memory
    assert isinstance(train_loader.generator, torch.Generator)  # checkpointed on resume
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    test_loader = utils.make_loader(test, 4, cpu, False, workers=0)
    (a, ya), = list(test_loader)
    (b, _), = list(test_loader)
    assert a.shape == (3, 3, 224, 224) and torch.equal(a, b)  # eval: Resize + CenterCrop, no noise
    assert torch.equal(ya, test.labels)
    image = Image.open(os.path.join(image_folder, "val", "ant", "0.jpg")).convert("RGB")
    expected = TF.center_crop(TF.resize(TF.pil_to_tensor(image), 256), 224).float() / 255
    mean, std = torch.tensor(utils.IMAGENET_MEAN), torch.tensor(utils.IMAGENET_STD)
    torch.testing.assert_close(a[0], (expected - mean[:, None, None]) / std[:, None, None],
                               atol=0.05, rtol=0)  # PIL vs tensor resize: a few grey levels


def test_smalldatasets_keeps_every_class_and_corrupt_relabels(tmp_path):
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4)
    data = utils.FolderSet([f"{i}.jpg".encode() for i in range(12)], labels, CLASSES, augment=True)
    small = data.subset(6)
    assert small.labels.tolist() == [0, 0, 1, 1, 2, 2]  # round robin, in folder order
    assert [p.decode() for p in small.paths] == ["0.jpg", "1.jpg", "5.jpg", "6.jpg", "8.jpg", "9.jpg"]
    assert data.subset(10).labels.bincount().tolist() == [4, 3, 3]  # class 1 runs out
    noisy = small.with_labels(torch.zeros(6, dtype=torch.int64))
    assert noisy.labels.sum() == 0 and list(noisy.paths) == list(small.paths)


def test_folder_layout_errors_name_data_root(tmp_path):
    root = make_image_folder(tmp_path / "data")
    os.rename(root / "val" / "cat", root / "val" / "dog")
    with pytest.raises(utils.UsageError, match=r"--data-root .*differing in 'cat'"):
        utils.check_dataset_name("folder", str(root))
    flat = tmp_path / "flat"
    (flat / "train" / "a").mkdir(parents=True)
    (flat / "val").mkdir()
    (flat / "val" / "x.JPEG").write_bytes(b"")
    with pytest.raises(utils.UsageError, match=r"val/ holds images but no class folders"):
        utils.check_dataset_name("ImageNet", str(flat))
    (flat / "val" / "a").mkdir()
    (flat / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(utils.UsageError, match=r"train/a/ holds no images"):
        utils.load_folder(True, str(flat))
    with pytest.raises(utils.UsageError, match="for --datasets folder"):
        utils.check_arch_name("resnet20", "folder")
    utils.check_arch_name("resnet20", "CIFAR10")


def test_folder_end_to_end_sgd_pbfgs_psgd(image_folder, tmp_path, capsys):
    save = tmp_path / "run"
    # --smalldatasets 0.25: one image per class, one batch per epoch (and the option exercised)
    common = ["--datasets", "folder", "--data-root", image_folder, "--arch", ARCH, "--workers", 0,
              "--device", "cpu", "--save-dir", save, "--smalldatasets", 0.25]
    assert run_here("train_sgd.py", *common, "--epochs", 2, "--batch-size", 3, "--lr", 0.01) == 0
    assert "folder (3 train / 3 test, 3 classes)" in capsys.readouterr().out
    model = utils.new_model(ARCH, "folder", 3)
    for e in range(3):
        state = torch.load(save / f"{e}.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.eval()
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)
    assert json.load(open(save / "run.json"))["num_classes"] == 3
    assert len(json.load(open(save / "results_sgd.json"))["epochs"]) == 3

    sub = [*common, "--params_end", 3, "--n_components", 2, "--epochs", 1, "--batch-size", 3]
    assert run_here("train_pbfgs.py", *sub) == 0
    assert run_here("train_psgd.py", *sub, "--lr", 0.01) == 0
    for name in ("results_pbfgs.json", "results_psgd.json"):
        epochs = json.load(open(save / name))["epochs"]
        assert len(epochs) == 2 and all(math.isfinite(r["test_loss"]) for r in epochs), name
        assert math.isfinite(epochs[-1]["train_loss"]), name


@pytest.mark.end_to_end  # five runs of a 224-pixel network (about 40 s): after the suite, in .ci/run
def test_imagenet_sampled_by_step_resumes_with_workers_and_reads_in_the_authors_layout(
        image_folder, tmp_path, capsys):
    """--datasets ImageNet sampled every 2 steps with 2 DataLoader workers (random crops and
    flips): stopped by SIGTERM (to the workers too) inside epoch 1 and resumed, the samples are
    those of the run never stopped (each image's augmentation comes from the seed, the epoch and
    its index). The same
    samples saved as the authors' main.py saves them under DataParallel ('module.' keys, no
    record beside them) train P-BFGS from the basis they give; P-SGD trains from ours."""
    arch = "squeezenet1_1"  # 4x faster than shufflenet here; its dropout draws are checkpointed
    common = ["--datasets", "ImageNet", "--data-root", image_folder, "--arch", arch, "--device",
              "cpu", "--batch-size", 4, "--print-freq", 1]
    sgd = [*common, "--workers", 2, "--epochs", 2, "--lr", 0.01, "--sample-every-steps", 2]
    straight, stopped, authors = tmp_path / "straight", tmp_path / "stopped", tmp_path / "authors"
    assert run_here("train_sgd.py", *sgd, "--save-dir", straight) == 0
    with sigterm_during_step(1, 0, children=True):  # the workers too: they ignore it
        assert run_here("train_sgd.py", *sgd, "--save-dir", stopped) == 128 + 15
    assert run_here("train_sgd.py", *sgd, "--save-dir", stopped, "--resume") == 0
    assert "inside epoch 1, after its batch 0" in capsys.readouterr().out
    samples = utils.available_samples(str(straight))
    assert samples == utils.available_samples(str(stopped)) == [0, 1, 2, 3]  # 3 steps an epoch
    for k in samples:
        assert (straight / f"{k}.pt").read_bytes() == (stopped / f"{k}.pt").read_bytes(), k

    authors.mkdir()
    parallel = torch.nn.DataParallel(utils.new_model(arch, "ImageNet", 3)).state_dict().keys()
    for k in samples:
        state = torch.load(straight / f"{k}.pt", weights_only=True)
        torch.save({f"module.{name}": value for name, value in state.items()}, authors / f"{k}.pt")
        assert torch.load(authors / f"{k}.pt", weights_only=True).keys() == parallel
    sub = [*common, "--workers", 0, "--params_end", 4, "--n_components", 2, "--epochs", 1]
    assert run_here("train_pbfgs.py", *sub, "--save-dir", authors) == 0
    model = utils.new_model(arch, "ImageNet", 3)
    _, ratios = utils.subspace_basis(
        utils.load_sample_matrix(str(straight), model, samples, arch).double(), 2)
    run = json.load(open(authors / "results_pbfgs.json"))
    np.testing.assert_allclose(run["explained_variance_ratio"], ratios.tolist(), rtol=1e-4)
    assert math.isfinite(run["final"]["train_loss"])
    assert run_here("train_psgd.py", *sub, "--lr", 0.01, "--save-dir", straight) == 0
    run = json.load(open(straight / "results_psgd.json"))
    assert run["sample_fingerprint"]["steps"] == [0, 2, 4, 6]
    assert math.isfinite(run["final"]["train_loss"])
