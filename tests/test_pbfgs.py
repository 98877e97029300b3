"""P-BFGS and the P-SGD projection against independent float64 implementations written here."""
import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dldr.distributed
import train_pbfgs
import utils
from dldr.optim import NonFiniteError
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
    monkeypatch.setattr(utils, "global_batch_share", lambda loader, i, n: 0.5)
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


# torch.optim's contracts


def _layout(model, basis, layout, **kw):
    """P-BFGS on the model's own parameters ("plain") or on FlatParameters views ("flat")."""
    params = FlatParameters(model).params if layout == "flat" else model.parameters()
    return PBFGS(params, basis, buffers=model.buffers(), **kw)


def _same_state(a, b):
    """Optimizer state dicts equal bit for bit (tensors with torch.equal)."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_state(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_state, a, b))
    return a == b


def _pickle_copy(obj):
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("layout", ["plain", "flat"])
@pytest.mark.parametrize("copier", [copy.deepcopy, _pickle_copy], ids=["deepcopy", "pickle"])
def test_copied_optimizer_continues_bit_for_bit(copier, layout):
    model, basis, batches = make_problem(seed=10, n_batches=6)
    opt = _layout(model, basis, layout, alpha=0.05)
    for x, y in batches[:3]:
        pbfgs_step(opt, model, x, y)
    c_model, c_opt = copier((model, opt))
    assert all(a is b for a, b in zip(c_opt.param_groups[0]["params"], c_model.parameters()))
    assert all(a is b for a, b in zip(c_opt._buffers, c_model.buffers()))
    assert torch.equal(c_opt.basis, opt.basis)
    for x, y in batches[3:]:
        assert pbfgs_step(opt, model, x, y) == pbfgs_step(c_opt, c_model, x, y)
    assert torch.equal(vector(model.parameters()), vector(c_model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), c_model.buffers()))
    assert torch.equal(opt.H, c_opt.H)
    assert not torch.equal(opt.H, torch.eye(len(basis), dtype=opt.H.dtype))
    assert opt.search_steps == c_opt.search_steps and len(opt.search_steps) == 6
    assert _same_state(opt.state_dict(), c_opt.state_dict())


@pytest.mark.parametrize("layout", ["plain", "flat"])
def test_parameters_that_do_not_require_grad_never_change(layout):
    model, basis, batches = make_problem(seed=11, n_batches=3)
    opt = _layout(model, basis, layout, alpha=0.05)
    frozen = model.conv.bias
    frozen.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    for x, y in batches:
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
                frozen.grad = torch.ones_like(frozen)  # a stale gradient: it counts as zero
            return loss
        opt.step(closure)
    for name, p in model.named_parameters():
        if p is frozen:
            assert torch.equal(p, before[name])
        else:
            assert not torch.equal(p, before[name]), name


def test_frozen_gradient_counts_as_zero_in_the_coordinates():
    model, basis, batches = make_problem(seed=12, n_batches=1)
    twin = copy.deepcopy(model)
    opt = new_pbfgs(model, basis)
    model.fc.bias.requires_grad_(False)
    x, y = batches[0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
            model.fc.bias.grad = torch.full_like(model.fc.bias, 7.0)
        return loss
    opt.step(closure)
    F.cross_entropy(twin(x), y).backward()
    twin.fc.bias.grad.zero_()
    g = torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
    assert torch.allclose(opt.state[next(model.parameters())]["g_last"], basis @ g,
                          rtol=1e-12, atol=1e-15)


def _tiny_params(n=3):
    return [torch.zeros(n, dtype=torch.float64, requires_grad=True)]


def _orthonormal(k, d, dtype=torch.float64):
    return utils.random_basis(d, k, seed=0).to(dtype)


def _with(basis, i, j, value):
    basis = basis.clone()
    basis[i, j] = value
    return basis


def _two_groups(model, basis):
    params = list(model.parameters())
    return [{"params": params[:2]}, {"params": params[2:]}], basis, {}


INVALID = {
    # name: (params, basis, kwargs) from (model, basis); the words the message must contain
    "sigma 0": (lambda m, b: (m.parameters(), b, dict(sigma=0.0)), "sigma"),
    "sigma 1": (lambda m, b: (m.parameters(), b, dict(sigma=1.0)), "sigma"),
    "sigma nan": (lambda m, b: (m.parameters(), b, dict(sigma=float("nan"))), "sigma"),
    "sigma str": (lambda m, b: (m.parameters(), b, dict(sigma="0.4")), "sigma"),
    "shrink 0": (lambda m, b: (m.parameters(), b, dict(shrink=0.0)), "shrink"),
    "shrink 1": (lambda m, b: (m.parameters(), b, dict(shrink=1.0)), "shrink"),
    "max_search 0": (lambda m, b: (m.parameters(), b, dict(max_search=0)), "max_search"),
    "max_search 2.5": (lambda m, b: (m.parameters(), b, dict(max_search=2.5)), "max_search"),
    "max_search True": (lambda m, b: (m.parameters(), b, dict(max_search=True)), "max_search"),
    "alpha < 0": (lambda m, b: (m.parameters(), b, dict(alpha=-0.1)), "alpha"),
    "alpha inf": (lambda m, b: (m.parameters(), b, dict(alpha=float("inf"))), "alpha"),
    "alpha nan": (lambda m, b: (m.parameters(), b, dict(alpha=float("nan"))), "alpha"),
    "gamma 1": (lambda m, b: (m.parameters(), b, dict(gamma=1.0)), "gamma"),
    "gamma < 0": (lambda m, b: (m.parameters(), b, dict(gamma=-0.1)), "gamma"),
    "curvature_eps < 0": (lambda m, b: (m.parameters(), b, dict(curvature_eps=-1e-20)),
                          "curvature_eps"),
    "two param groups": (_two_groups, "one parameter group"),
    "basis not a tensor": (lambda m, b: (m.parameters(), b.numpy(), {}), "torch tensor"),
    "basis 1-D": (lambda m, b: (m.parameters(), b[0], {}), "2-D"),
    "basis 3-D": (lambda m, b: (m.parameters(), b[None], {}), "2-D"),
    "basis integer": (lambda m, b: (m.parameters(), b.long(), {}), "floating point"),
    "basis nan": (lambda m, b: (m.parameters(), _with(b, 0, 3, float("nan")), {}), "nan or inf"),
    "basis inf": (lambda m, b: (m.parameters(), _with(b, 1, 0, float("inf")), {}), "nan or inf"),
    "basis k > D": (lambda m, b: (_tiny_params(3), torch.eye(4, 3, dtype=torch.float64), {}),
                    "k <= D"),
    "basis k = 0": (lambda m, b: (m.parameters(), b[:0], {}), "k must be at least 1"),
    "basis columns": (lambda m, b: (m.parameters(), b[:, :-1], {}), "columns"),
    "basis not orthonormal, float64": (lambda m, b: (m.parameters(), b * (1 + 1e-7), {}),
                                       "not orthonormal"),
    "basis not orthonormal, float32": (lambda m, b: (m.parameters(), b.float() * (1 + 1e-3), {}),
                                       "not orthonormal"),
    "basis rows not orthogonal": (lambda m, b: (m.parameters(), torch.cat([b[:1], b[:1]]), {}),
                                  "not orthonormal"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_settings_raise_value_error_naming_them(case):
    make, words = INVALID[case]
    model, basis, _ = make_problem(seed=13)
    params, basis, kwargs = make(model, basis)
    with pytest.raises(ValueError, match=words):
        PBFGS(params, basis, buffers=model.buffers(), **kwargs)


def test_bases_within_the_stated_tolerance_are_accepted():
    model, basis, batches = make_problem(seed=13, n_batches=1)
    PBFGS(model.parameters(), basis * (1 + 1e-10))  # max |P P^T - I| ~ 2e-10 <= 1e-8 (float64)
    PBFGS(model.parameters(), basis.float() * (1 + 1e-5))  # ~ 2e-5 <= 1e-4 (float32)
    PBFGS(model.parameters(), basis, alpha=0, curvature_eps=0, gamma=0, max_search=np.int64(1))


def test_loading_the_state_of_another_k_names_both_sizes():
    model, basis, batches = make_problem(seed=14, k=5, n_batches=1)
    a = new_pbfgs(model, basis)
    pbfgs_step(a, model, *batches[0])
    b = new_pbfgs(copy.deepcopy(model), basis[:3])
    with pytest.raises(ValueError) as e:
        b.load_state_dict(a.state_dict())
    assert "(5, 5)" in str(e.value) and "(3, 3)" in str(e.value)
    assert not b.state  # nothing was loaded


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_loss_or_gradient_raises_and_changes_nothing(where, value):
    assert issubclass(NonFiniteError, FloatingPointError)
    model, basis, batches = make_problem(seed=15, n_batches=4)
    opt = new_pbfgs(model, basis, alpha=0.05)
    for x, y in batches[:2]:
        pbfgs_step(opt, model, x, y)
    twin, twin_opt = copy.deepcopy((model, opt))
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    state = copy.deepcopy(opt.state_dict())
    x, y = batches[2]

    def bad_closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)  # in train mode: moves the BatchNorm statistics
        if where == "loss":
            loss = loss * value
        if torch.is_grad_enabled():
            loss.backward()
            if where == "gradient":
                model.fc.weight.grad[1, 2] = value
        return loss
    what = {"loss": f"the loss is {value}", "gradient": f"the gradient has {value} entries"}[where]
    with pytest.raises(NonFiniteError, match=what + "; the weights are left as they were"):
        opt.step(bad_closure)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    assert _same_state(opt.state_dict(), state)
    # ... so that the run goes on as if the refused step had not been tried
    for x, y in batches[2:]:
        assert pbfgs_step(opt, model, x, y) == pbfgs_step(twin_opt, twin, x, y)
    assert torch.equal(vector(model.parameters()), vector(twin.parameters()))
    assert opt.search_steps == twin_opt.search_steps and len(opt.search_steps) == 4


def test_a_refused_first_step_creates_no_state():
    model, basis, batches = make_problem(seed=16, n_batches=1)
    opt = new_pbfgs(model, basis)
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        pbfgs_step(opt, model, *batches[0],
                   criterion=lambda out, y: F.cross_entropy(out, y) * np.nan)
    assert not opt.state


INVALID_PROJECTION = {
    "1-D": (lambda b: b[0], "2-D"),
    "integer": (lambda b: b.long(), "floating point"),
    "k > D": (lambda b: torch.eye(b.shape[1] + 1, b.shape[1], dtype=b.dtype), "k <= D"),
    "columns": (lambda b: b[:, 1:], "columns"),
    "nan": (lambda b: _with(b, 2, 5, float("nan")), "nan or inf"),
    "not orthonormal, float64": (lambda b: b * (1 + 1e-7), "not orthonormal"),
    "not orthonormal, float32": (lambda b: b.float() * (1 + 1e-3), "not orthonormal"),
}


@pytest.mark.parametrize("case", list(INVALID_PROJECTION))
def test_project_gradients_checks_the_basis(case):
    make, words = INVALID_PROJECTION[case]
    params = [torch.zeros(7, dtype=torch.float64, requires_grad=True),
              torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    basis = make(_orthonormal(4, 13))
    with pytest.raises(ValueError, match=words):
        project_gradients_(params, basis)


def test_project_gradients_checks_each_basis_once(monkeypatch):
    import dldr.optim
    checked = []
    check = dldr.optim._check_basis_values
    monkeypatch.setattr(dldr.optim, "_check_basis_values",
                        lambda basis, tol: (checked.append(basis.shape), check(basis, tol)))
    p = torch.zeros(13, dtype=torch.float64, requires_grad=True)
    basis = _orthonormal(4, 13)
    for _ in range(5):
        p.grad = torch.randn_like(p)
        project_gradients_([p], basis)
    assert len(checked) == 1
    project_gradients_([p], basis[:])  # a view of the same numbers
    assert len(checked) == 1
    basis[0] *= 1.0  # an in-place write: checked again
    project_gradients_([p], basis)
    assert len(checked) == 2
    basis[0] *= 2.0  # ... and refused
    with pytest.raises(ValueError, match="not orthonormal"):
        project_gradients_([p], basis)
    with pytest.raises(ValueError, match="columns"):  # the shape: every call
        project_gradients_([p, torch.zeros(1, requires_grad=True)], _orthonormal(4, 13))
