"""The model zoo: every registered --arch at the reference size, trainable, and reproducible."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

import models
import utils
from conftest import REFERENCE, ROOT

with open(REFERENCE) as f:
    REFERENCE_COUNTS = json.load(f)["counts"]

# Registered on top of the reference zoo: the authors' resnet8, other depths/widths of the wide
# ResNet.
EXTRA_NAMES = {"resnet8", "wrn16_4", "wrn28_10"}


def test_registry_covers_the_reference_zoo():
    names = set(models.names())
    assert set(REFERENCE_COUNTS) <= names
    assert names - set(REFERENCE_COUNTS) == EXTRA_NAMES


@pytest.mark.parametrize("name", models.names())
def test_architecture_size_forward_and_backward(name):
    """Built once, with 100 classes: the reference zoo's parameter count, a forward pass and
    gradients reaching every parameter."""
    torch.manual_seed(0)
    model = models.build(name, num_classes=100)
    expected = REFERENCE_COUNTS.get(name, {}).get("100")
    if expected is not None:
        assert sum(p.numel() for p in model.parameters()) == expected
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    F.cross_entropy(out, torch.tensor([0, 99])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    if missing:  # the network says so itself, as DDP under torchrun is told (not by a list)
        if utils.drops_branches(model):
            assert len(missing) < len(list(model.parameters()))  # dropped blocks, this step
        else:  # parameters no forward uses (nasnet's adapters), found on the meta device too
            assert missing == utils.unused_parameters(model, (2, 3, 32, 32))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_unknown_arch_lists_the_known_names():
    with pytest.raises(models.UnknownArchError) as e:
        models.build("resnet21")
    assert "resnet21" in str(e.value) and "resnet20" in str(e.value) and "vgg16" in str(e.value)


def test_wide_resnet_depth_and_width_are_selectable():
    from models.wideresnet import wide_resnet
    model = wide_resnet(10, 2, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError):
        wide_resnet(11, 2)


@pytest.mark.parametrize("name", ["stochasticdepth18"])
def test_stochastic_depth_is_reproducible(name):
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    model = models.build(name, 10)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    outs = []
    for seed in (5, 5, 6, 6):  # the draws come from the network's own generator
        model.random_generator.manual_seed(seed)
        with torch.no_grad():
            outs.append(torch.stack([model(x) for _ in range(6)]))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])
    assert not torch.equal(outs[0], outs[2])  # the seed matters: blocks really are dropped


def test_documented_table_matches_the_registry():
    text = open(os.path.join(ROOT, "docs", "architectures.md")).read()
    block = text.split("<!-- models:start -->")[1].split("<!-- models:end -->")[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([\d,]+) \| ([\d,]+) \|$", block, re.M)
    assert sorted(r[0] for r in rows) == models.names()
    for name, family, c10, c100 in rows:
        assert family == models.family(name)
        if name in REFERENCE_COUNTS:
            assert int(c100.replace(",", "")) == REFERENCE_COUNTS[name]["100"]


@pytest.mark.parametrize("arch", ["squeezenet", "mobilenetv2", "shufflenetv2"])
def test_whole_method_on_other_families(arch, tmp_path):
    """A few SGD steps with samples, the DLDR basis, then P-BFGS steps that lower the loss."""
    import utils

    torch.manual_seed(0)
    data = utils.load_digits(True).subset(16)
    model = models.build(arch, 10)
    loader = utils.MemoryLoader(data, 8, torch.device("cpu"), shuffle=True, seed=0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    utils.save_sample(model, str(tmp_path), 0)
    for epoch in range(1, 4):
        for x, y in loader:
            sgd.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sgd.step()
        utils.save_sample(model, str(tmp_path), epoch)
    samples = utils.load_sample_matrix(str(tmp_path), model, range(4), arch)
    basis, ratios = utils.subspace_basis(samples, 3)
    assert basis.shape == (3, samples.shape[1]) and float(ratios.sum()) == pytest.approx(1.0)
    utils.load_sample_into(model, str(tmp_path / "0.pt"), arch)
    opt = utils.PBFGS(model.parameters(), basis.float(), buffers=model.buffers())
    x, y = data.images.float() / 255, data.labels

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    losses = [opt.step(closure).item() for _ in range(2)]  # the loss before each step
    assert losses[-1] < losses[0], losses
