"""P-BFGS and the P-SGD projection against independent float64 implementations written here."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from train_pbfgs import PBFGS
from train_psgd import project_gradients_


class TinyNet(nn.Module):
    """Conv + BatchNorm (buffers that the line search must restore) + linear head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def make_problem(seed=0, k=5, n_batches=6, batch=16):
    torch.manual_seed(seed)
    model = TinyNet().double()
    dim = sum(p.numel() for p in model.parameters())
    basis = utils.random_basis(dim, k, seed=seed + 1)  # float64, orthonormal rows
    batches = [(torch.randn(batch, 3, 8, 8, dtype=torch.float64), torch.randint(4, (batch,)))
               for _ in range(n_batches)]
    return model, basis, batches


def params_of(model):
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def set_params(model, w):
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(w[offset:offset + p.numel()]).view_as(p))
            offset += p.numel()


class ReferencePBFGS:
    """Textbook P-BFGS in float64 numpy: the expanded inverse-BFGS formula, explicit backtracking."""

    def __init__(self, model, basis, criterion, sigma=0.4, shrink=0.4, tries=20, alpha=0.0, gamma=0.9):
        self.model, self.P = model, basis.numpy()
        self.criterion = criterion
        self.sigma, self.shrink, self.tries, self.alpha, self.gamma = sigma, shrink, tries, alpha, gamma
        self.H = np.eye(self.P.shape[0])
        self.s = self.g = None
        self.mom = np.zeros(self.P.shape[1])
        self.shrinks = []

    def loss_and_grad(self, x, y):
        self.model.train()
        self.model.zero_grad()
        loss = self.criterion(self.model(x), y)
        loss.backward()
        return loss.item(), np.concatenate([p.grad.numpy().ravel() for p in self.model.parameters()])

    def step(self, x, y):
        f0, grad = self.loss_and_grad(x, y)
        P, H = self.P, self.H
        g = P @ grad
        if self.g is not None:
            yv, s = g - self.g, self.s
            ys = float(yv @ s)
            if ys > 1e-20:
                r = 1.0 / ys
                Hy = H @ yv
                H = (H - r * (np.outer(s, Hy) + np.outer(Hy, s))
                     + (r * r * float(yv @ Hy) + r) * np.outer(s, s))
        self.H, self.g = H, g
        d = -H @ g
        w0 = params_of(self.model)
        saved = [b.clone() for b in self.model.buffers()]
        m = 0
        while m < self.tries:
            set_params(self.model, w0 + P.T @ (d * self.shrink ** m))
            with torch.no_grad():
                f = self.criterion(self.model(x), y).item()
            for b, v in zip(self.model.buffers(), saved):
                b.copy_(v)
            if f < f0 + self.sigma * self.shrink ** m * float(g @ d):
                break
            m += 1
        self.s = d * self.shrink ** m
        self.shrinks.append(m)
        w = w0 + P.T @ self.s
        if self.alpha:
            self.mom = self.gamma * self.mom + (grad - P.T @ g)
            w = w - self.alpha * self.mom
        set_params(self.model, w)
        return f0


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_pbfgs_matches_float64_reference_step_by_step(alpha):
    model, basis, batches = make_problem()
    ref_model = copy.deepcopy(model)
    opt = PBFGS(model, basis, alpha=alpha)
    ref = ReferencePBFGS(ref_model, basis, F.cross_entropy, alpha=alpha)
    for x, y in batches:
        loss = opt.step(x, y)
        ref_loss = ref.step(x, y)
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        assert rel_err(params_of(model), params_of(ref_model)) < 1e-9
        assert rel_err(opt.H.numpy(), ref.H) < 1e-9
        for b, rb in zip(model.buffers(), ref_model.buffers()):  # restored after every try
            assert torch.allclose(b, rb, rtol=1e-9, atol=1e-15) and b.dtype == rb.dtype
    assert opt.search_steps == ref.shrinks
    assert len(opt.search_steps) == len(batches)


class FailingTrials:
    """Cross-entropy, but every line-search try is made to fail (loss + 100)."""

    def __init__(self, per_iteration):
        self.calls, self.per_iteration = 0, per_iteration

    def __call__(self, out, y):
        bump = 0.0 if self.calls % self.per_iteration == 0 else 100.0
        self.calls += 1
        return F.cross_entropy(out, y) + bump


def test_pbfgs_takes_the_last_shrunken_step_when_every_try_fails():
    model, basis, batches = make_problem(seed=1, n_batches=3)
    ref_model = copy.deepcopy(model)
    opt = PBFGS(model, basis, criterion=FailingTrials(21))
    ref = ReferencePBFGS(ref_model, basis, FailingTrials(21))
    for x, y in batches:
        w_before = params_of(model)
        opt.step(x, y)
        ref.step(x, y)
        assert rel_err(params_of(model), params_of(ref_model)) < 1e-9
        assert np.abs(params_of(model) - w_before).max() > 0  # the tiny step is still taken
    assert opt.search_steps == ref.shrinks == [20, 20, 20]


def test_pbfgs_shrinks_when_the_full_step_is_too_long():
    model, basis, batches = make_problem(seed=2, n_batches=4)
    ref_model = copy.deepcopy(model)
    scaled = lambda out, y: 300.0 * F.cross_entropy(out, y)  # huge gradient: d = -g overshoots
    opt = PBFGS(model, basis, criterion=scaled)
    ref = ReferencePBFGS(ref_model, basis, scaled)
    for x, y in batches:
        opt.step(x, y)
        ref.step(x, y)
        assert rel_err(params_of(model), params_of(ref_model)) < 1e-9
    assert opt.search_steps == ref.shrinks
    assert max(opt.search_steps) > 0


def test_pbfgs_skips_non_finite_curvature_pairs():
    model, basis, batches = make_problem(seed=3, n_batches=2)
    messages = []
    opt = PBFGS(model, basis, log=messages.append)
    opt.step(*batches[0])
    opt.g_last = torch.full_like(opt.g_last, float("nan"))
    H_before = opt.H.clone()
    opt.step(*batches[1])
    assert opt.skipped_pairs == 1 and "non-finite" in messages[0]
    assert torch.equal(opt.H, H_before)
    assert torch.isfinite(utils.flat_params(model)).all()


def test_accumulated_gradient_is_the_average():
    model, basis, batches = make_problem(seed=4, n_batches=3)
    ref_model = copy.deepcopy(model)
    opt = PBFGS(model, basis)
    loss = opt.step_accumulated(batches)
    # The reference: average the gradients, then one update with the last batch's loss.
    grads = []
    for x, y in batches:
        ref_model.zero_grad()
        F.cross_entropy(ref_model(x), y).backward()
        grads.append(utils.flat_grad(ref_model).clone())
    g = torch.stack(grads).mean(0)
    assert torch.allclose(opt.g_last, basis @ g, rtol=1e-10, atol=1e-13)
    assert loss == pytest.approx(F.cross_entropy(copy.deepcopy(ref_model).train()(batches[-1][0]),
                                                 batches[-1][1]).item(), rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_sums_over_processes_are_each_taken_once(monkeypatch, alpha):
    """Two identical processes, simulated in one: each holds the whole batch with share 1/2, and a
    sum over processes doubles. The run must then equal one process's bit for bit (powers of two
    scale exactly): a missing sum halves a quantity, a repeated one doubles it. Covers the k
    coordinates (alpha 0), the whole gradient (alpha != 0), accumulation and the line search."""
    model, basis, batches = make_problem(seed=6, n_batches=4)
    twin = copy.deepcopy(model)
    one = PBFGS(model, basis, alpha=alpha)
    losses_one = [one.step_accumulated(batches[i:i + 2]) for i in (0, 2)]
    monkeypatch.setattr(utils, "global_batch_share", lambda n, device: 0.5)
    monkeypatch.setattr(utils, "all_reduce_sum_", lambda t: t.mul_(2))
    two = PBFGS(twin, basis, alpha=alpha)
    losses_two = [two.step_accumulated(batches[i:i + 2]) for i in (0, 2)]
    assert losses_two == losses_one
    assert torch.equal(one.H, two.H) and not torch.equal(one.H, torch.eye(len(basis), dtype=one.H.dtype))
    assert torch.equal(utils.flat_params(twin), utils.flat_params(model))


def test_pbfgs_state_round_trip():
    model, basis, batches = make_problem(seed=5)
    twin = copy.deepcopy(model)
    a, b = PBFGS(model, basis), PBFGS(twin, basis)
    for x, y in batches[:3]:
        a.step(x, y)
        b.step(x, y)
    c_model = copy.deepcopy(model)
    c = PBFGS(c_model, basis)
    c.load_state_dict(a.state_dict())
    for x, y in batches[3:]:
        a.step(x, y)
        c.step(x, y)
    assert torch.equal(utils.flat_params(model), utils.flat_params(c_model))


def test_project_gradients_is_PtPg():
    model, basis, batches = make_problem(seed=6)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    g = utils.flat_grad(model).clone()
    project_gradients_(model, basis)
    expected = basis.T @ (basis @ g)
    assert torch.allclose(utils.flat_grad(model), expected, rtol=1e-12, atol=1e-15)
    # Projecting twice changes nothing (P^T P is a projector), also on the flat-buffer path.
    flat = utils.FlatParameters(model)
    flat.grad.copy_(g)
    project_gradients_(model, basis, flat)
    project_gradients_(model, basis, flat)
    assert torch.allclose(flat.grad, expected, rtol=1e-12, atol=1e-15)
    assert flat.check_views()


def test_pbfgs_lowers_the_training_loss():
    torch.manual_seed(0)
    model, basis, _ = make_problem(seed=7, k=8)
    x, y = torch.randn(64, 3, 8, 8, dtype=torch.float64), torch.randint(4, (64,))
    opt = PBFGS(model, basis)
    losses = [opt.step(x, y) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


def test_compiled_model_follows_the_eager_trajectory():
    """--compile: P-BFGS through torch.compile (flat-buffer views, buffer restores) = eager."""
    model, basis, batches = make_problem(seed=8, n_batches=4)
    twin = copy.deepcopy(model)
    eager = PBFGS(model, basis)
    flat = utils.FlatParameters(twin)
    compiled = PBFGS(torch.compile(twin, backend="aot_eager"), basis, flat=flat)
    for x, y in batches:
        assert compiled.step(x, y) == pytest.approx(eager.step(x, y), rel=1e-10)
    assert torch.allclose(flat.data, utils.flat_params(model), rtol=1e-9, atol=1e-12)
    assert compiled.search_steps == eager.search_steps


def test_bf16_autocast_pbfgs_lowers_the_loss():
    torch.manual_seed(0)
    model = TinyNet()
    basis = utils.random_basis(sum(p.numel() for p in model.parameters()), 8, seed=1).float()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(4, (64,))
    opt = PBFGS(model, basis, amp="bf16")
    losses = [opt.step(x, y) for _ in range(12)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
