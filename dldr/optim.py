"""Training inside a subspace: P-BFGS (a torch.optim optimizer) and P-SGD's gradient projection.

Both take a (k, D) ``basis`` P with orthonormal rows over the D trainable parameters in
``named_parameters()`` order. Under torchrun each process holds its part of every batch; the sums
over processes that the method needs (k gradient coordinates, the line search's losses) are taken
here, so all processes take the same step.
"""
import math
import numbers
import weakref

import torch

from . import distributed
from .progress import NonFiniteLoss


def trainable_parameters(model):
    return [p for _, p in model.named_parameters() if p.requires_grad]


class FlatParameters:
    """A model's trainable parameters (and their gradients) as views into one flat buffer each.

    ``project_gradients_`` (P-SGD) then projects the D gradient numbers as one vector, in place,
    instead of gathering and scattering them every step, and a training loop reads the weights as
    one vector (``data``). PBFGS gathers and scatters on any layout (no slower per epoch than
    working in the buffer: BENCHMARKS.md, "P-BFGS on FlatParameters views"). Create it after moving
    the model to its device and dtype and before torch.compile (the compiled graph must see the
    views). Zero the gradients with ``zero_grad()`` (in place): ``Optimizer.zero_grad()`` sets them
    to None, after which ``project_gradients_`` still works, by gathering.
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


def _contiguous_span(tensors):
    """A 1-D view of the memory that ``tensors`` fill back to back in one storage, in order (as
    FlatParameters lays out parameters and gradients), or None when they do not."""
    if not tensors or any(t is None for t in tensors):
        return None
    first = tensors[0]
    storage, offset = first.untyped_storage().data_ptr(), first.storage_offset()
    for t in tensors:
        if (t.untyped_storage().data_ptr() != storage or t.storage_offset() != offset
                or t.dtype != first.dtype or not t.is_contiguous()):
            return None
        offset += t.numel()
    return first.detach().as_strided((offset - first.storage_offset(),), (1,),
                                     first.storage_offset())


def _gradient_vector(params, trainable=None):
    """The flat gradient, a new vector: zeros for a parameter the loss did not reach, or that
    ``trainable`` (one flag per parameter) marks as frozen."""
    trainable = trainable or [True] * len(params)
    return torch.cat([p.grad.reshape(-1) if t and p.grad is not None else p.new_zeros(p.numel())
                      for p, t in zip(params, trainable)])


# The largest |P P^T - I| accepted of a basis, by its dtype (16-bit types: 1e-2).
ORTHONORMALITY_TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}


def _orthonormality_tolerance(*dtypes):
    """The looser of the dtypes' tolerances: a basis is as orthonormal as its lowest precision."""
    return max(ORTHONORMALITY_TOLERANCE.get(dtype, 1e-2) for dtype in dtypes)


def _check_basis_shape(basis, dim):
    """The cheap checks, O(1): a floating-point (k, D) tensor, 0 < k <= D, D = ``dim``."""
    if not isinstance(basis, torch.Tensor):
        raise ValueError(f"basis must be a torch tensor, got {type(basis).__name__}")
    if basis.dim() != 2:
        raise ValueError(f"basis must be 2-D (k, D), got shape {tuple(basis.shape)}")
    if not basis.is_floating_point():
        raise ValueError(f"basis must be floating point, got {basis.dtype}")
    k, d = basis.shape
    if k == 0:
        raise ValueError("basis has no rows: k must be at least 1")
    if k > d:
        raise ValueError(f"basis has k = {k} rows for D = {d} columns: k orthonormal rows need "
                         "k <= D")
    if d != dim:
        raise ValueError(f"basis has {d} columns, the parameters {dim} numbers")


def _compute_dtype(basis, params, *, held=False):
    """The dtype that the projection is computed in: the basis's and the parameters' promoted,
    at least float32, so that a 16-bit side neither overflows (a float16 square of a large
    gradient) nor needs a matching partner (addmv takes one dtype); float32 with float32 is left
    as it is. ``held`` (PBFGS, which copies the basis once into this dtype and device): the
    parameters' dtype, at least float32, whatever the basis's. Also the device check: the
    parameters on one device, the basis on it too unless ``held``; TypeError/ValueError naming
    what differs."""
    dtypes = {p.dtype for p in params}
    odd = sorted(str(t) for t in dtypes if not t.is_floating_point)
    if odd:
        raise TypeError(f"parameters of dtype {', '.join(odd)}: the subspace methods take real "
                        f"floating-point parameters (the basis is {basis.dtype})")
    devices = {p.device for p in params}
    if len(devices) != 1:
        raise ValueError("the parameters are on several devices "
                         f"({', '.join(sorted(map(str, devices)))}): the subspace couples all of "
                         "them, put them on one")
    device, = devices
    if basis.device != device and (not held or "meta" in (basis.device.type, device.type)):
        raise ValueError(f"the basis is on {basis.device}, the parameters on {device}: move the "
                         f"basis there (basis.to({str(device)!r}))")
    dtype = torch.float32
    for t in (*dtypes, *(() if held else (basis.dtype,))):
        dtype = torch.promote_types(dtype, t)
    return dtype


@torch.no_grad()
def _check_basis_values(basis, tolerance):
    """The O(k D) and O(k^2 D) checks: finite entries and max |P P^T - I| <= ``tolerance``. The
    Gram matrix is computed in float64 over blocks of columns (32 MB each), so that neither a long
    float32 sum nor a full-size copy gets in the way."""
    k, d = basis.shape
    block = max(1, (1 << 22) // k)
    gram = torch.zeros(k, k, dtype=torch.float64, device=basis.device)
    finite = torch.ones((), dtype=torch.bool, device=basis.device)
    for start in range(0, d, block):
        columns = basis[:, start:start + block].to(torch.float64)  # a float32 sum of a million
        finite &= torch.isfinite(columns).all()                     # products drifts by 1e-4
        gram += columns @ columns.T
    if not finite:
        raise ValueError("basis has nan or inf entries")
    error = (gram - torch.eye(k, dtype=torch.float64, device=basis.device)).abs().max().item()
    if not error <= tolerance:
        raise ValueError(f"basis rows are not orthonormal: max |P P^T - I| = {error:.3g} exceeds "
                         f"the tolerance {tolerance:g} ({basis.dtype})")


_checked_bases = {}  # (data_ptr, _version, shape, stride, dtype, device) -> weakref to the tensor


def _version(tensor):
    """The tensor's version counter (bumped by in-place writes); None for an inference tensor,
    which keeps none."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def _check_basis_once(basis):
    """``_check_basis_values`` for a basis not already checked at its current contents: the key is
    its memory, its version counter (bumped by in-place writes) and its layout, and the entry
    counts only while a tensor that passed is alive (so that freed memory reused by a new tensor
    is checked again)."""
    version = _version(basis)  # None (an inference tensor): checked every time
    key = (basis.data_ptr(), version, tuple(basis.shape), basis.stride(), basis.dtype,
           basis.device)
    ref = _checked_bases.get(key)
    if version is not None and ref is not None and ref() is not None:
        return
    _check_basis_values(basis, _orthonormality_tolerance(basis.dtype))
    if version is not None:
        for stale in [old for old, alive in _checked_bases.items() if alive() is None]:
            del _checked_bases[stale]
        _checked_bases[key] = weakref.ref(basis)


@torch.no_grad()
def project_gradients_(params, basis):
    """Replace the gradient g of ``params`` by its projection P^T P g onto the subspace (P-SGD).

    A plain function, for any training loop: call it between ``backward()`` and the optimizer's
    step. Under torchrun the k coordinates P g are summed over the processes, not the D numbers.

    ``basis`` is checked as PBFGS's is (ValueError): a floating-point (k, D) tensor, 0 < k <= D, D
    the parameters' total size, finite, with rows orthonormal to max |P P^T - I| <= 1e-8 (float64),
    1e-4 (float32) or 1e-2 (16-bit types). The shape is checked every call; the O(k^2 D) rest once
    per basis tensor and contents (it is redone after an in-place change of the basis, which bumps
    its version counter; a write through ``basis.data`` or a NumPy view does not, and is not seen).
    The basis may have any floating-point dtype, the parameters any real floating-point dtype: the
    projection is computed in the two promoted, at least float32 (float32 with float32: as is), and
    written back in the gradients' dtype. The basis must be on the parameters' device (ValueError
    naming both); parameters that are not real floating point raise TypeError.
    """
    params = list(params)
    _check_basis_shape(basis, sum(p.numel() for p in params))
    dtype = _compute_dtype(basis, params)
    _check_basis_once(basis)
    span = _contiguous_span([p.grad for p in params])
    grad = (span if span is not None else _gradient_vector(params)).to(dtype)  # no copy: same
    P = basis.to(dtype)                                                        # dtype
    coords = distributed.all_reduce_sum_(P @ grad)
    projected = P.T @ coords
    if span is not None:
        span.copy_(projected)
        return
    offset = 0
    for p in params:
        piece = projected[offset:offset + p.numel()].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = piece.clone()
        else:
            p.grad.copy_(piece)
        offset += p.numel()


def bfgs_inverse_update(H, s, y):
    """The BFGS update of an inverse-Hessian estimate H from a step s and the gradient change y,

        H <- (I - rho y s^T)^T H (I - rho y s^T) + rho s s^T,   rho = 1 / (y^T s),

    the estimate that satisfies the secant condition H y = s. Needs y^T s > 0."""
    rho = 1.0 / torch.dot(y, s)
    t = torch.eye(len(s), dtype=H.dtype, device=H.device) - rho * torch.outer(y, s)
    return t.T @ H @ t + rho * torch.outer(s, s)


class NonFiniteError(FloatingPointError, NonFiniteLoss):
    """A P-BFGS step refused because the closure's loss or the gradient is not finite; the step
    changed nothing (weights, buffers, optimizer state). Also a ``NonFiniteLoss``, which the
    training scripts turn into a one-line stop that names the last good checkpoint."""


def _real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


class PBFGS(torch.optim.Optimizer):
    """P-BFGS (Li et al., TPAMI 2022): BFGS on the k coordinates of the subspace spanned by the
    rows of ``basis``, written as torch.optim.LBFGS is::

        opt = PBFGS(model.parameters(), basis, buffers=model.buffers())
        loss = opt.step(closure)

    ``closure`` zeroes the gradients, computes the batch loss, calls ``backward()`` only when
    ``torch.is_grad_enabled()`` and returns the loss. With w the D numbers of the parameters (in
    order) and P the (k, D) basis, one step is:

    1. gradient: the closure, with gradients, gives the loss f0 and the gradient g (zero for a
       parameter that does not require gradients); its coordinates g_k = P g.
    2. H update: the inverse-Hessian estimate H (k x k, at first I) is updated with the last step
       s and y = g_k - (the last g_k) by :func:`bfgs_inverse_update` when y^T s > curvature_eps;
       a non-finite pair is left out and counted in ``skipped_pairs``.
    3. direction: d = -H g_k.
    4. Armijo backtracking: s = d, shrunk (s <- shrink s) while f(w + P^T s) >= f0 + sigma g_k^T s,
       at most max_search tries, the last shrunken step taken anyway; the closure is called under
       ``torch.no_grad()`` and ``buffers`` are restored after every try (as the authors' reload
       from disk did). ``search_steps`` lists each step's shrinks (max_search: no try accepted).
       With ``recompute_reference`` f0 is the loss of one more such call at w, before the tries.
    5. apply: w <- w + P^T s; with alpha > 0 also w <- w - alpha m, m <- gamma m + (g - P^T g_k)
       (m = g - P^T g_k at the first step), a momentum of the gradient outside the subspace.

    Only the parameters that require gradients at the time of a step are written (torch.optim
    skips the others). A loss or gradient that is nan or inf raises :class:`NonFiniteError` before
    anything is changed. Under torchrun the closure returns this process's share of the global
    batch's loss (its mean loss times its share of the batch); the losses and the k coordinates g_k
    (with alpha > 0 the whole gradient) are summed over the processes here.

    The state (H, the last s and g_k, the momentum, ``search_steps``, ``skipped_pairs``,
    ``iterations``) is kept with the first parameter's, as torch.optim.LBFGS does; it goes through
    ``state_dict()``, and the basis and buffers travel with ``copy.deepcopy`` and pickling.

    Args:
        params (iterable): the parameters to optimize (one group), D numbers in all.
        basis (Tensor): (k, D) floating-point tensor with 0 < k <= D, finite, its rows orthonormal
            to max |P P^T - I| <= 1e-8 for float64, 1e-4 for float32, 1e-2 for 16-bit types (the
            looser of the basis's and the parameters' dtypes); checked here, and again at a step
            after an in-place change of the held tensor (its version counter). It is held in the
            parameters' dtype, at least float32 (float16 and bfloat16 parameters: the step is
            computed in float32 and rounded once into them), on their device (copied there; a
            basis or parameters on 'meta' are refused, naming both devices). Parameters that
            are not real floating point raise TypeError.
        buffers (iterable, optional): tensors restored after every line-search try and when a
            step is refused, e.g. ``model.buffers()`` (BatchNorm statistics) (default: ())
        sigma (float, optional): Armijo's sufficient-decrease factor, in (0, 1) (default: 0.4)
        shrink (float, optional): the backtracking factor, in (0, 1) (default: 0.4)
        max_search (int, optional): line-search tries per step, at least 1 (default: 20)
        alpha (float, optional): step size of the momentum outside the subspace, finite and
            >= 0; 0 turns it off (default: 0.0)
        gamma (float, optional): factor of that momentum, in [0, 1) (default: 0.9)
        curvature_eps (float, optional): H is updated only when y^T s exceeds it, >= 0
            (default: 1e-20)
        recompute_reference (bool, optional): compare the line search's tries with f0 computed
            again as they are, by a closure call under ``torch.no_grad()`` at the step's start
            (``buffers`` restored after it), instead of the gradient pass's loss: one more
            forward per step, for autocast (bf16) and torch.compile, where the gradient and the
            no-grad passes go through different kernels whose rounding differences can exceed
            sigma g_k^T s late in training and shrink good steps (default: False)
    """

    def __init__(self, params, basis, buffers=(), *, sigma=0.4, shrink=0.4, max_search=20,
                 alpha=0.0, gamma=0.9, curvature_eps=1e-20, recompute_reference=False):
        if not isinstance(recompute_reference, bool):
            raise ValueError(f"recompute_reference must be True or False, got "
                             f"{recompute_reference!r}")
        if not 0.0 < _real("sigma", sigma) < 1.0:
            raise ValueError(f"sigma must be in (0, 1), got {sigma!r}")
        if not 0.0 < _real("shrink", shrink) < 1.0:
            raise ValueError(f"shrink must be in (0, 1), got {shrink!r}")
        if (isinstance(max_search, bool) or not isinstance(max_search, numbers.Integral)
                or max_search < 1):
            raise ValueError(f"max_search must be an int >= 1, got {max_search!r}")
        if not (math.isfinite(_real("alpha", alpha)) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
        if not 0.0 <= _real("gamma", gamma) < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
        if not _real("curvature_eps", curvature_eps) >= 0.0:
            raise ValueError(f"curvature_eps must be >= 0, got {curvature_eps!r}")
        defaults = dict(sigma=sigma, shrink=shrink, max_search=max_search, alpha=alpha,
                        gamma=gamma, curvature_eps=curvature_eps)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("PBFGS takes one parameter group: the subspace couples all parameters")
        _check_basis_shape(basis, sum(p.numel() for p in self._params))
        dtype = _compute_dtype(basis, self._params, held=True)
        self.basis = basis.to(device=self._params[0].device, dtype=dtype)
        self._basis_tolerance = _orthonormality_tolerance(basis.dtype,
                                                          *(p.dtype for p in self._params))
        self._check_basis()
        self._buffers = list(buffers)
        self.recompute_reference = recompute_reference

    def _check_basis(self):
        """The O(k^2 D) check of the held basis, noted with its version counter: a step after an
        in-place change of ``self.basis`` (or of the tensor passed in, when it is held as it is)
        checks it again."""
        tolerance = getattr(self, "_basis_tolerance", None)  # None: pickled before it was kept
        _check_basis_values(self.basis, tolerance or _orthonormality_tolerance(self.basis.dtype))
        self._basis_version = _version(self.basis)

    @property
    def _params(self):
        return self.param_groups[0]["params"]

    def __getstate__(self):
        # torch.optim keeps defaults, state and param_groups; the basis and buffers travel too
        return {**super().__getstate__(), "basis": self.basis, "_buffers": self._buffers,
                "_basis_tolerance": self._basis_tolerance,
                "recompute_reference": self.recompute_reference}

    def load_state_dict(self, state_dict):
        k, dim = self.basis.shape
        sizes = {"H": (k, k), "g_last": (k,), "s_last": (k,), "momentum": (dim,)}
        for saved in state_dict["state"].values():
            for key, size in sizes.items():
                value = saved.get(key)
                if torch.is_tensor(value) and tuple(value.shape) != size:
                    raise ValueError(
                        f"the state's {key} has shape {tuple(value.shape)}, this optimizer's "
                        f"{size} (k = {k} subspace coordinates, D = {dim} parameters): it is the "
                        "state of a P-BFGS with another basis")
        super().load_state_dict(state_dict)

    def _state(self):
        state = self.state[self._params[0]]
        state.setdefault("H", torch.eye(len(self.basis), dtype=self.basis.dtype,
                                        device=self.basis.device))
        state.setdefault("s_last", None)
        state.setdefault("g_last", None)
        state.setdefault("momentum", None)
        state.setdefault("search_steps", [])
        state.setdefault("skipped_pairs", 0)
        state.setdefault("iterations", 0)
        return state

    @property
    def H(self):
        return self._state()["H"]

    @property
    def search_steps(self):
        return self._state()["search_steps"]

    @property
    def skipped_pairs(self):
        """Non-finite curvature pairs left out of H (for instance after an overflow)."""
        return self._state()["skipped_pairs"]

    def _gather_flat_weights(self):
        return torch.cat([p.reshape(-1) for p in self._params])

    def _set_weights(self, vector, trainable):
        """Copy ``vector`` into the parameters that require gradients (one fused copy on CUDA)."""
        pieces = vector.split([p.numel() for p in self._params])
        pairs = [(p, v.view_as(p)) for p, v, t in zip(self._params, pieces, trainable) if t]
        if pairs:
            torch._foreach_copy_([p for p, _ in pairs], [v for _, v in pairs])

    def _restore(self, saved):
        for b, value in zip(self._buffers, saved):
            b.copy_(value)

    @staticmethod
    def _global(loss):
        """The global batch's loss: the sum of the processes' contributions, on the device."""
        return distributed.all_reduce_sum_(loss.detach().clone())

    @staticmethod
    def _checked(loss, pass_name, undo):
        """The closure's result, if it is a one-element floating-point tensor; else TypeError,
        saying what it returned, after ``undo()`` (the weights and buffers put back)."""
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1
                and loss.is_floating_point()):
            undo()
            what = (f"a {loss.dtype} tensor of shape {tuple(loss.shape)}"
                    if isinstance(loss, torch.Tensor) else f"{type(loss).__name__} {loss!r:.40}")
            raise TypeError(f"P-BFGS: the closure returned {what} in the {pass_name} pass; it "
                            "must return the loss as a one-element floating-point tensor (not "
                            ".item(), not a list of losses)")
        return loss

    def _check_finite(self, loss, grad, gk, before):
        """The global loss as a float, read with the finiteness of the gradient in one host sync;
        NonFiniteError (the buffers restored to ``before``) when either is nan or inf."""
        finite = torch.isfinite(grad).all() & torch.isfinite(gk).all()
        loss_value, grad_finite = torch.stack(
            [loss.reshape(()), finite.to(device=loss.device, dtype=loss.dtype)]).tolist()
        if math.isfinite(loss_value) and grad_finite:
            return loss_value
        self._restore(before)
        if not math.isfinite(loss_value):
            problem = f"the loss is {loss_value}"
        else:
            bad = grad if not torch.isfinite(grad).all() else gk
            what = "nan" if torch.isnan(bad).any() else "inf"
            problem = (f"the gradient has {what} entries" if bad is grad else
                       f"the gradient's subspace coordinates P g have {what} entries")
        raise NonFiniteError(f"P-BFGS step: {problem}; the weights are left as they were before "
                             "this step")

    @staticmethod
    def _residual_momentum(state, gamma, residual):
        """m <- gamma m + residual (m = residual at first), kept in the state; returns m."""
        m = state["momentum"]
        state["momentum"] = residual if m is None else gamma * m + residual
        return state["momentum"]

    @torch.no_grad()
    def step(self, closure):
        """One P-BFGS step (see the class docstring); returns the closure's first loss.

        Args:
            closure (Callable): zeroes the gradients, computes the loss, calls ``backward()``
                when ``torch.is_grad_enabled()``, and returns the loss.

        Raises:
            NonFiniteError: the loss or the gradient is nan or inf; nothing was changed.
            TypeError: the closure returned no one-element floating-point tensor (the weights
                and buffers put back).
            ValueError: the held basis, changed in place, is no longer orthonormal.
        """
        group = self.param_groups[0]
        sigma, shrink, max_search = group["sigma"], group["shrink"], group["max_search"]
        alpha, gamma, curvature_eps = group["alpha"], group["gamma"], group["curvature_eps"]
        P = self.basis
        trainable = [p.requires_grad for p in self._params]  # at the time of this step
        before = [b.clone() for b in self._buffers]  # put back if the step is refused

        if _version(P) != getattr(self, "_basis_version", None):  # changed in place (or copied)
            self._check_basis()
        w0 = self._gather_flat_weights().to(P.dtype)  # 16-bit parameters: float32 (no-op else)

        def undo():  # before raising: the weights and buffers as they were
            self._set_weights(w0, trainable)
            self._restore(before)

        # gradient
        with torch.enable_grad():
            loss = closure()
        loss = self._checked(loss, "gradient", undo)
        total = self._global(loss)
        grad = _gradient_vector(self._params, trainable).to(P.dtype)
        if alpha != 0:  # the residual momentum needs the whole summed gradient: D numbers
            distributed.all_reduce_sum_(grad)
        gk = P @ grad
        if alpha == 0:  # otherwise its k subspace coordinates are enough
            distributed.all_reduce_sum_(gk)
        residual = grad - P.T @ gk if alpha != 0 else None
        loss_value = self._check_finite(total, grad, gk, before)
        saved = [b.clone() for b in self._buffers]  # put back after every try
        if getattr(self, "recompute_reference", False):  # f0 as the tries compute theirs
            reference = self._global(self._checked(closure(), "reference", undo))
            self._restore(saved)
            loss_value = self._check_finite(reference, grad, gk, before)
        state = self._state()

        # H update
        if state["g_last"] is not None:
            yk, s = gk - state["g_last"], state["s_last"]
            ys = torch.dot(yk, s)
            if not (torch.isfinite(ys) and torch.isfinite(yk).all()):
                state["skipped_pairs"] += 1
            elif ys > curvature_eps:
                state["H"] = bfgs_inverse_update(state["H"], s, yk)
        state["g_last"] = gk

        # direction
        direction = -(state["H"] @ gk)
        descent = torch.dot(gk, direction).item()

        # Armijo backtracking
        step, shrinks = direction, 0
        while shrinks < max_search:
            self._set_weights(torch.addmv(w0, P.T, step), trainable)
            trial = self._global(self._checked(closure(), "line-search", undo)).item()
            self._restore(saved)
            if trial < loss_value + sigma * descent:
                break
            shrinks += 1
            descent *= shrink
            step = step * shrink
        state["search_steps"].append(shrinks)
        state["s_last"] = step

        # apply
        weights = torch.addmv(w0, P.T, step)
        if alpha != 0:
            weights.add_(self._residual_momentum(state, gamma, residual), alpha=-alpha)
        self._set_weights(weights, trainable)
        state["iterations"] += 1
        return loss
