"""The library's numerical contracts (issues 24.4 and 25.5): the line search's reference loss under
bf16, the dtypes and devices that the projection and P-BFGS take, the basis checked again after
an in-place change, and clear errors for bad inputs of the basis builders and closures."""
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dldr.optim
import train_pbfgs
import utils
from conftest import DIGITS_SUB
from test_pbfgs import pbfgs_step
from dldr.optim import NonFiniteError
from utils import PBFGS, FlatParameters, project_gradients_

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
CHEAP = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def flat_vector(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors])


class TinyNet(nn.Module):
    """Conv + BatchNorm (buffers the line search restores) + a linear head. ``fused_head``: under
    autocast the no-grad passes keep the head's float32 accumulator instead of rounding it to
    bf16, as a fused inference kernel (or another compiled graph) does; the gradient pass rounds."""

    def __init__(self, fused_head=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 4)
        self.fused_head = fused_head

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1)
        if self.fused_head and not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                low = [t.bfloat16().float() for t in (x, self.fc.weight, self.fc.bias)]
                return F.linear(*low)
        return self.fc(x)


def problem(seed, dtype=torch.float64, k=5, fused_head=False):
    torch.manual_seed(seed)
    model = TinyNet(fused_head).to(dtype)
    basis = utils.random_basis(sum(p.numel() for p in model.parameters()), k, seed=seed + 1)
    x, y = torch.randn(16, 3, 8, 8, dtype=dtype), torch.randint(4, (16,))
    return model, basis.to(dtype), x, y


# A. The line search's reference loss (issue 24.4)


def _run(model, basis, x, y, steps, rounded, **kw):
    """``steps`` P-BFGS steps on one batch. ``rounded``: the gradient pass reports its loss as a
    kernel reducing in bf16 would (the gradient itself exact), the no-grad passes exactly: the
    mismatch between the two kinds of pass that bf16 autocast and torch.compile bring."""
    opt = PBFGS(model.parameters(), basis, buffers=model.buffers(), **kw)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
            if rounded:
                loss = loss + (loss.detach().bfloat16().to(loss.dtype) - loss.detach())
        return loss
    for _ in range(steps):
        opt.step(closure)
    return opt.search_steps, flat_vector(model.parameters()), flat_vector(model.buffers())


@pytest.mark.parametrize("seed", [0, 4])
def test_recompute_reference_decides_on_no_grad_losses_only(seed):
    """With recompute_reference the gradient pass's loss no longer enters the Armijo test: a run
    whose gradient pass rounds its loss takes the exact run's steps bit for bit (weights, search
    steps, BatchNorm buffers put back after the extra pass); without it, the rounding, larger than
    sigma g_k^T s once the steps are small, changes the decisions."""
    model, basis, x, y = problem(seed)
    exact = _run(copy.deepcopy(model), basis, x, y, 12, rounded=False)
    fixed = _run(copy.deepcopy(model), basis, x, y, 12, rounded=True, recompute_reference=True)
    old = _run(copy.deepcopy(model), basis, x, y, 12, rounded=True)
    assert fixed[0] == exact[0]
    assert torch.equal(fixed[1], exact[1]) and torch.equal(fixed[2], exact[2])
    assert old[0] != exact[0]


def test_bf16_pbfgs_takes_the_fp32_decisions_through_the_script_closure():
    """train_pbfgs's own epoch: bf16 autocast (with recompute_reference, as the script sets it for
    --amp bf16) on a model whose no-grad passes use another kernel takes the accept/shrink
    decisions of the fp32 run over the first steps, lowers the loss, and costs exactly one more
    closure call per step. (bf16's own rounding flips a close Armijo call now and then: over
    seeds, the first 2 to 6 steps agree; this problem's first 4 are not close calls.)"""
    model, basis, x, y = problem(seed=0, dtype=torch.float32, k=8, fused_head=True)
    batches = [(x, y)] * 4  # one batch again and again: the steps shrink towards its minimum
    runs = {}
    for amp in (None, "bf16"):
        twin = copy.deepcopy(model)
        flat = FlatParameters(twin)
        opt = PBFGS(flat.params, basis, buffers=twin.buffers(), recompute_reference=amp == "bf16")
        progress = utils.EpochProgress(0, len(batches), 10 ** 6)
        calls = []
        train_pbfgs.train_epoch(twin, flat, opt, batches, progress, 1, amp,
                                lambda: calls.append(torch.is_grad_enabled()))
        runs[amp] = opt.search_steps, calls, twin
    (fp32_steps, fp32_calls, _), (bf16_steps, bf16_calls, bf16_model) = runs.values()
    assert bf16_steps == fp32_steps and len(bf16_steps) == len(batches)
    tries = sum(min(s + 1, 20) for s in bf16_steps)  # each step's line-search forwards
    assert fp32_calls.count(True) == bf16_calls.count(True) == len(batches)
    assert fp32_calls.count(False) == tries
    assert bf16_calls.count(False) == tries + len(batches)  # + the reference pass
    with torch.no_grad():
        before, after = (F.cross_entropy(m(x), y).item() for m in (model, bf16_model))
    assert after < 0.9 * before


class _Made(Exception):
    pass


def test_the_script_recomputes_the_reference_only_under_bf16(digits_samples, monkeypatch):
    made = []

    class Spy(PBFGS):  # records the option and stops the run there: nothing trained or written
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self.recompute_reference)
            raise _Made
    monkeypatch.setattr(utils, "PBFGS", Spy)
    for amp in ([], ["--amp", "bf16"]):
        with pytest.raises(_Made):
            # its own tag: the shared folder may hold a finished P-BFGS run, which is not replaced
            train_pbfgs.main([*DIGITS_SUB, *amp, "--save-dir", str(digits_samples),
                              "--output-tag", "spy"])
    assert made == [False, True]


def test_recompute_reference_is_validated_and_a_non_finite_reference_changes_nothing():
    model, basis, x, y = problem(seed=2)
    with pytest.raises(ValueError, match="recompute_reference must be True or False"):
        PBFGS(model.parameters(), basis, recompute_reference=1)
    opt = PBFGS(model.parameters(), basis, buffers=model.buffers(), recompute_reference=True)
    weights, buffers = flat_vector(model.parameters()), flat_vector(model.buffers())

    def closure():  # finite with gradients, nan without: the reference pass is refused
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
            return loss
        return loss * float("nan")
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        opt.step(closure)
    assert torch.equal(flat_vector(model.parameters()), weights)
    assert torch.equal(flat_vector(model.buffers()), buffers)
    assert not opt.state


# B. Dtypes, devices, in-place changes, bad inputs (issue 25.5)


def _eps(dtype):
    return torch.finfo(dtype).eps


@st.composite
def projection_cases(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    dim = sum(sizes)
    return dict(sizes=sizes, k=draw(st.integers(1, dim)), seed=draw(st.integers(0, 2 ** 16)),
                basis_dtype=draw(st.sampled_from(FLOATS)),
                param_dtype=draw(st.sampled_from(FLOATS)),
                large=draw(st.booleans()), flat=draw(st.booleans()),
                device=draw(st.sampled_from(["cpu", "meta"])))


@CHEAP
@given(projection_cases())
def test_project_gradients_takes_any_float_dtypes(case):
    """Any float basis with any float parameters: P^T P g of the float64 reference to the
    precision of the lower of float32 and the parameters' dtype (16-bit bases: to their own
    rounding, which the reference shares), finite for gradients that overflow float16 squared,
    written in the gradients' dtype; float32 with float32 exactly as before (basis.T @ (basis @
    g)). A basis on another device is refused, naming both."""
    pdtype, bdtype = case["param_dtype"], case["basis_dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    # large: beyond float16 (1e6), or for float16 parameters with |g| (D <= 18) still below its
    # largest, 65504 (1.5e4: the float16 products P g would overflow)
    scale = (1.5e4 if pdtype == torch.float16 else 1e6) if case["large"] else 1.0
    holder = nn.ParameterList([nn.Parameter(torch.zeros(n, dtype=pdtype)) for n in case["sizes"]])
    params = FlatParameters(holder).params if case["flat"] else list(holder)
    for p in params:
        value = ((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(pdtype)
        if p.grad is None:
            p.grad = value
        else:  # FlatParameters: views into its gradient buffer
            p.grad.copy_(value)
    dim = sum(case["sizes"])
    basis = utils.random_basis(dim, case["k"], seed=case["seed"]).to(bdtype)
    if case["device"] == "meta":
        with pytest.raises(ValueError, match="basis is on meta, the parameters on cpu"):
            project_gradients_(params, basis.to("meta"))
        return
    g64 = flat_vector([p.grad for p in params]).double()
    p64 = basis.double()
    expected = p64.T @ (p64 @ g64)
    old = (basis.T @ (basis @ g64.to(bdtype))) if bdtype == pdtype == torch.float32 else None
    project_gradients_(params, basis)
    got = flat_vector([p.grad for p in params])
    assert all(p.grad.dtype == pdtype for p in params)
    assert torch.isfinite(got).all()
    compute = torch.promote_types(torch.promote_types(bdtype, pdtype), torch.float32)
    bound = g64.norm() * (_eps(pdtype) + 4 * dim * _eps(compute)) + 1e-30
    assert (got.double() - expected).abs().max() <= bound
    if old is not None:
        assert torch.equal(got, old)


@st.composite
def pbfgs_cases(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    return dict(sizes=sizes, k=draw(st.integers(1, sum(sizes))), seed=draw(st.integers(0, 999)),
                basis_dtype=draw(st.sampled_from(FLOATS)),
                param_dtype=draw(st.sampled_from(FLOATS)),
                device=draw(st.sampled_from(["cpu", "meta"])))


@CHEAP
@given(pbfgs_cases())
def test_pbfgs_takes_any_float_dtypes(case):
    """P-BFGS holds the basis in the parameters' dtype, at least float32, on their device; one
    step on a quadratic has g_k = P g and moves the weights to w + P^T s (float64 references),
    rounded once to the parameters' dtype. A basis on another device that cannot be copied to
    theirs (meta) is refused, naming both."""
    pdtype, bdtype = case["param_dtype"], case["basis_dtype"]
    g = torch.Generator().manual_seed(case["seed"])
    params = [torch.randn(n, generator=g, dtype=torch.float64).to(pdtype).requires_grad_()
              for n in case["sizes"]]
    dim = sum(case["sizes"])
    basis = utils.random_basis(dim, case["k"], seed=case["seed"]).to(bdtype)
    if case["device"] == "meta":
        with pytest.raises(ValueError, match="basis is on meta, the parameters on cpu"):
            PBFGS(params, basis.to("meta"))
        return
    opt = PBFGS(params, basis)
    held = torch.promote_types(pdtype, torch.float32)
    assert opt.basis.dtype == held and torch.equal(opt.basis, basis.to(held))
    w0 = flat_vector(params).double()
    curvature = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        w = torch.cat([p.reshape(-1) for p in params]).double()
        loss = 0.5 * (curvature * w * w).sum() - w.sum()
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    opt.step(closure)
    state = opt.state[params[0]]
    grad = (curvature * w0 - 1).to(pdtype).double()  # as backward() wrote it at w0
    p64 = opt.basis.double()
    assert state["g_last"].dtype == held
    assert torch.allclose(state["g_last"].double(), p64 @ grad, rtol=0,
                          atol=float(grad.norm()) * 8 * dim * _eps(held))
    s = state["s_last"].double()
    expected = w0 + p64.T @ s
    got = flat_vector(params)
    assert got.dtype == pdtype
    assert (got.double() - expected).abs().max() <= (
        expected.abs().max() * _eps(pdtype) + 8 * dim * _eps(held) * (1 + w0.norm() + s.norm()))


def test_parameters_that_are_not_real_floats_are_refused_naming_the_dtype():
    params = [torch.zeros(3, dtype=torch.complex64, requires_grad=True)]
    params[0].grad = torch.ones_like(params[0])
    basis = utils.random_basis(3, 2, seed=0).float()
    with pytest.raises(TypeError, match="complex64"):
        project_gradients_(params, basis)
    with pytest.raises(TypeError, match="complex64"):
        PBFGS(params, basis)


def test_parameters_on_meta_are_refused_naming_both_devices():
    params = [torch.zeros(4, device="meta", requires_grad=True)]
    with pytest.raises(ValueError, match="basis is on cpu, the parameters on meta"):
        PBFGS(params, utils.random_basis(4, 2, seed=0))


def test_pbfgs_checks_its_basis_again_after_an_in_place_change(monkeypatch):
    model, basis, x, y = problem(seed=3)
    opt = PBFGS(model.parameters(), basis, buffers=model.buffers())
    assert opt.basis is basis  # float64 with float64: held as passed, so the caller can edit it
    checked = []
    check = dldr.optim._check_basis_values
    monkeypatch.setattr(dldr.optim, "_check_basis_values",
                        lambda b, tol: (checked.append(tol), check(b, tol)))
    pbfgs_step(opt, model, x, y)
    pbfgs_step(opt, model, x, y)
    assert checked == []  # unchanged: not checked again
    basis[1] *= -1  # still orthonormal: checked, accepted
    pbfgs_step(opt, model, x, y)
    assert checked == [1e-8]
    weights, buffers = flat_vector(model.parameters()), flat_vector(model.buffers())
    basis[0] *= 2
    with pytest.raises(ValueError, match="not orthonormal"):
        pbfgs_step(opt, model, x, y)
    assert torch.equal(flat_vector(model.parameters()), weights)
    assert torch.equal(flat_vector(model.buffers()), buffers)
    assert len(opt.search_steps) == 3 and checked == [1e-8, 1e-8]


@pytest.mark.parametrize("returned, words", [
    (lambda loss: loss.item(), "returned float"),
    (lambda loss: None, "returned NoneType None"),
    (lambda loss: torch.stack([loss, loss]), "tensor of shape (2,)"),
], ids=["float", "None", "two losses"])
@pytest.mark.parametrize("pass_name", ["gradient", "reference", "line-search"])
def test_a_closure_that_returns_no_loss_tensor_raises_type_error(returned, words, pass_name):
    """TypeError saying what the closure returned, and in which pass; the weights and buffers as
    they were."""
    model, basis, x, y = problem(seed=5)
    opt = PBFGS(model.parameters(), basis, buffers=model.buffers(),
                recompute_reference=pass_name == "reference")
    calls = []

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        calls.append(torch.is_grad_enabled())
        wrong = {"gradient": len(calls) == 1, "reference": len(calls) == 2,
                 "line-search": not torch.is_grad_enabled()}[pass_name]
        return returned(loss) if wrong else loss
    weights, buffers = flat_vector(model.parameters()), flat_vector(model.buffers())
    with pytest.raises(TypeError, match=rf"{re.escape(words)}.* in the {pass_name} pass; it must"):
        opt.step(closure)
    assert torch.equal(flat_vector(model.parameters()), weights)
    assert torch.equal(flat_vector(model.buffers()), buffers)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 12), st.integers(-2, 14), st.integers(0, 100))
def test_random_basis_gives_k_orthonormal_rows_or_refuses(dim, k, seed):
    if not 1 <= k <= dim:
        with pytest.raises(ValueError, match="random_basis: n_components"):
            utils.random_basis(dim, k, seed)
        return
    basis = utils.random_basis(dim, k, seed)
    assert basis.shape == (k, dim) and basis.dtype == torch.float64
    assert torch.allclose(basis @ basis.T, torch.eye(k, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("build", [utils.span_basis, lambda s: utils.subspace_basis(s, 1)],
                         ids=["span_basis", "subspace_basis"])
def test_basis_builders_name_what_is_wrong_with_the_samples(build):
    with pytest.raises(ValueError, match=r"2-D \(n, D\) tensor.*got shape \(6,\).*samples\[None\]"):
        build(torch.randn(6))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4\)"):
        build(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="must be a torch tensor .* got list"):
        build([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(TypeError, match="floating point, got torch.int64"):
        build(torch.arange(6).reshape(2, 3))
