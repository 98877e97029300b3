"""P-BFGS and the P-SGD projection against independent float64 implementations written here."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dldr.distributed
import train_pbfgs
import utils
from utils import PBFGS, FlatParameters, project_gradients_

vector = torch.nn.utils.parameters_to_vector


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


def pbfgs_step(opt, model, x, y, criterion=F.cross_entropy):
    """One P-BFGS step on one batch through a closure in torch.optim's convention."""
    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return opt.step(closure).item()


def new_pbfgs(model, basis, **kw):
    return PBFGS(model.parameters(), basis, buffers=model.buffers(), **kw)


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
    opt = new_pbfgs(model, basis, alpha=alpha)
    ref = ReferencePBFGS(ref_model, basis, F.cross_entropy, alpha=alpha)
    for x, y in batches:
        loss = pbfgs_step(opt, model, x, y)
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
    opt = new_pbfgs(model, basis)
    ref = ReferencePBFGS(ref_model, basis, FailingTrials(21))
    failing = FailingTrials(21)
    for x, y in batches:
        w_before = params_of(model)
        pbfgs_step(opt, model, x, y, failing)
        ref.step(x, y)
        assert rel_err(params_of(model), params_of(ref_model)) < 1e-9
        assert np.abs(params_of(model) - w_before).max() > 0  # the tiny step is still taken
    assert opt.search_steps == ref.shrinks == [20, 20, 20]


def test_pbfgs_shrinks_when_the_full_step_is_too_long():
    model, basis, batches = make_problem(seed=2, n_batches=4)
    ref_model = copy.deepcopy(model)
    scaled = lambda out, y: 300.0 * F.cross_entropy(out, y)  # huge gradient: d = -g overshoots
    opt = new_pbfgs(model, basis)
    ref = ReferencePBFGS(ref_model, basis, scaled)
    for x, y in batches:
        pbfgs_step(opt, model, x, y, scaled)
        ref.step(x, y)
        assert rel_err(params_of(model), params_of(ref_model)) < 1e-9
    assert opt.search_steps == ref.shrinks
    assert max(opt.search_steps) > 0


def test_pbfgs_skips_non_finite_curvature_pairs():
    model, basis, batches = make_problem(seed=3, n_batches=2)
    opt = new_pbfgs(model, basis)
    pbfgs_step(opt, model, *batches[0])
    opt.state[next(model.parameters())]["g_last"].fill_(float("nan"))
    H_before = opt.H.clone()
    pbfgs_step(opt, model, *batches[1])
    assert opt.skipped_pairs == 1
    assert torch.equal(opt.H, H_before)
    assert torch.isfinite(vector(model.parameters())).all()


def _train_pbfgs_epoch(model, basis, batches, accumulate, alpha=0.0):
    """train_pbfgs's own epoch (closure, accumulation, shares) over ``batches`` as the loader."""
    flat = FlatParameters(model)
    opt = PBFGS(flat.params, basis, buffers=model.buffers(), alpha=alpha)
    progress = utils.EpochProgress(0, -(-len(batches) // accumulate), 10 ** 6)
    train_pbfgs.train_epoch(model, flat, opt, batches, progress, accumulate, None, lambda: None)
    return opt, progress


def test_accumulated_gradient_is_the_average():
    model, basis, batches = make_problem(seed=4, n_batches=3)
    ref_model = copy.deepcopy(model)
    opt, progress = _train_pbfgs_epoch(model, basis, batches, accumulate=3)
    # The reference: average the gradients, then one update with the last batch's loss.
    grads = []
    for x, y in batches:
        ref_model.zero_grad()
        F.cross_entropy(ref_model(x), y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in ref_model.parameters()]))
    g = torch.stack(grads).mean(0)
    state = opt.state[next(model.parameters())]
    assert len(opt.search_steps) == 1
    assert torch.allclose(state["g_last"], basis @ g, rtol=1e-10, atol=1e-13)
    last = F.cross_entropy(copy.deepcopy(ref_model).train()(batches[-1][0]), batches[-1][1]).item()
    assert progress.loss == pytest.approx(last, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_sums_over_processes_are_each_taken_once(monkeypatch, alpha):
    """Two identical processes, simulated in one: each holds the whole batch with share 1/2, and a
    sum over processes doubles. The run must then equal one process's bit for bit (powers of two
    scale exactly): a missing sum halves a quantity, a repeated one doubles it. Covers the k
    coordinates (alpha 0), the whole gradient (alpha != 0), accumulation and the line search."""
    model, basis, batches = make_problem(seed=6, n_batches=4)
    twin = copy.deepcopy(model)
    one, _ = _train_pbfgs_epoch(model, basis, batches, accumulate=2, alpha=alpha)
    monkeypatch.setattr(utils, "global_batch_share", lambda n, device: 0.5)
    monkeypatch.setattr(dldr.distributed, "all_reduce_sum_", lambda t: t.mul_(2))
    two, _ = _train_pbfgs_epoch(twin, basis, batches, accumulate=2, alpha=alpha)
    assert one.search_steps == two.search_steps and len(one.search_steps) == 2
    assert torch.equal(one.H, two.H) and not torch.equal(one.H, torch.eye(len(basis), dtype=one.H.dtype))
    assert torch.equal(vector(twin.parameters()), vector(model.parameters()))


def test_pbfgs_state_round_trip():
    model, basis, batches = make_problem(seed=5)
    a = new_pbfgs(model, basis)
    for x, y in batches[:3]:
        pbfgs_step(a, model, x, y)
    c_model = copy.deepcopy(model)
    c = new_pbfgs(c_model, basis)
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    for x, y in batches[3:]:
        pbfgs_step(a, model, x, y)
        pbfgs_step(c, c_model, x, y)
    assert torch.equal(vector(model.parameters()), vector(c_model.parameters()))
    assert a.search_steps == c.search_steps and len(a.search_steps) == len(batches)


def test_project_gradients_is_PtPg():
    model, basis, batches = make_problem(seed=6)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    project_gradients_(model.parameters(), basis)
    expected = basis.T @ (basis @ g)
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)
    # Projecting twice changes nothing (P^T P is a projector), also on the flat-buffer path.
    flat = FlatParameters(model)
    flat.grad.copy_(g)
    project_gradients_(flat.params, basis)
    project_gradients_(flat.params, basis)
    assert torch.allclose(flat.grad, expected, rtol=1e-12, atol=1e-15)
    assert all(p.grad.data_ptr() == flat.grad[o:].data_ptr() for p, o in zip(
        flat.params, np.cumsum([0] + [p.numel() for p in flat.params])))  # still views


def test_flat_and_gathered_paths_take_the_same_steps():
    """FlatParameters only spares copies: P-BFGS on the flat buffer equals P-BFGS on plain
    parameters bit for bit."""
    model, basis, batches = make_problem(seed=9, n_batches=4)
    twin = copy.deepcopy(model)
    flat = FlatParameters(twin)
    plain, fast = new_pbfgs(model, basis, alpha=0.05), PBFGS(flat.params, basis,
                                                            buffers=twin.buffers(), alpha=0.05)
    for x, y in batches:
        pbfgs_step(plain, model, x, y)
        pbfgs_step(fast, twin, x, y)
    assert torch.equal(vector(model.parameters()), flat.data)


def test_pbfgs_lowers_the_training_loss():
    torch.manual_seed(0)
    model, basis, _ = make_problem(seed=7, k=8)
    x, y = torch.randn(64, 3, 8, 8, dtype=torch.float64), torch.randint(4, (64,))
    opt = new_pbfgs(model, basis)
    losses = [pbfgs_step(opt, model, x, y) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


def test_compiled_model_follows_the_eager_trajectory():
    """--compile: P-BFGS through torch.compile (flat-buffer views, buffer restores) = eager."""
    model, basis, batches = make_problem(seed=8, n_batches=4)
    twin = copy.deepcopy(model)
    eager = new_pbfgs(model, basis)
    flat = FlatParameters(twin)
    compiled_model = torch.compile(twin, backend="aot_eager")
    compiled = PBFGS(flat.params, basis, buffers=twin.buffers())
    for x, y in batches:
        assert pbfgs_step(compiled, compiled_model, x, y) == pytest.approx(
            pbfgs_step(eager, model, x, y), rel=1e-10)
    assert torch.allclose(flat.data, vector(model.parameters()), rtol=1e-9, atol=1e-12)
    assert compiled.search_steps == eager.search_steps


def test_bf16_autocast_pbfgs_lowers_the_loss():
    torch.manual_seed(0)
    model = TinyNet()
    basis = utils.random_basis(sum(p.numel() for p in model.parameters()), 8, seed=1).float()
    x, y = torch.randn(64, 3, 8, 8), torch.randint(4, (64,))
    opt = new_pbfgs(model, basis)

    def closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    losses = [opt.step(closure).item() for _ in range(12)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]
