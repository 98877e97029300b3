"""Training inside a subspace: P-BFGS (a torch.optim optimizer) and P-SGD's gradient projection.

Both take a (k, D) ``basis`` P with orthonormal rows over the D trainable parameters in
``named_parameters()`` order. Under torchrun each process holds its part of every batch; the sums
over processes that the method needs (k gradient coordinates, the line search's losses) are taken
here, so all processes take the same step.
"""
import torch

from . import distributed


def trainable_parameters(model):
    return [p for _, p in model.named_parameters() if p.requires_grad]


class FlatParameters:
    """A model's trainable parameters (and their gradients) as views into one flat buffer each.

    The optimisers below then project and update the D numbers as one vector instead of gathering
    and scattering them every step. Create it after moving the model to its device and dtype and
    before torch.compile (the compiled graph must see the views). Zero the gradients with
    ``zero_grad()`` (in place): ``Optimizer.zero_grad()`` sets them to None, after which the
    optimisers still work, by gathering.
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


def _gradient_vector(params):
    """The flat gradient: a view when FlatParameters laid it out, else a concatenation (zeros for
    a parameter the loss did not reach)."""
    span = _contiguous_span([p.grad for p in params])
    if span is not None:
        return span
    return torch.cat([p.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                      for p in params])


def _scatter_(params, vector):
    offset = 0
    for p in params:
        p.copy_(vector[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


@torch.no_grad()
def project_gradients_(params, basis):
    """Replace the gradient g of ``params`` by its projection P^T P g onto the subspace (P-SGD).

    A plain function, for any training loop: call it between ``backward()`` and the optimizer's
    step. Under torchrun the k coordinates P g are summed over the processes, not the D numbers.
    """
    params = list(params)
    span = _contiguous_span([p.grad for p in params])
    grad = span if span is not None else _gradient_vector(params).to(basis.dtype)
    coords = distributed.all_reduce_sum_(basis @ grad)
    projected = basis.T @ coords
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
    """The BFGS update of an inverse-Hessian estimate H from a step s and the gradient change y:
    (I - rho y s^T)^T H (I - rho y s^T) + rho s s^T, rho = 1 / (y^T s). Needs y^T s > 0."""
    rho = 1.0 / torch.dot(y, s)
    t = torch.eye(len(s), dtype=H.dtype, device=H.device) - rho * torch.outer(y, s)
    return t.T @ H @ t + rho * torch.outer(s, s)


class PBFGS(torch.optim.Optimizer):
    """P-BFGS (Li et al., TPAMI 2022): BFGS on the k coordinates of the subspace spanned by
    ``basis``, in torch.optim's conventions::

        opt = PBFGS(model.parameters(), basis, buffers=model.buffers())
        loss = opt.step(closure)

    ``closure`` zeroes the gradients, computes the batch loss and calls ``backward()`` only when
    ``torch.is_grad_enabled()``; it returns the loss. One step: the closure with gradients; the
    projected gradient g_k = P g; the inverse-Hessian estimate H updated by BFGS with the last
    pair (s, y) when y^T s > ``curvature_eps``; the direction d = -H g_k; Armijo backtracking on
    the closure's loss, called under ``torch.no_grad()`` (accept w + P^T s when f < f0 + sigma
    g_k^T s, else s <- shrink s, at most ``max_search`` tries, the last shrunken step taken
    anyway); then w <- w + P^T s, minus ``alpha`` times a momentum (factor ``gamma``) of the
    gradient's residual outside the subspace. ``buffers`` (BatchNorm statistics) are restored
    after every try, as the authors' reload from disk did.

    ``search_steps`` lists the shrinks of each step (``max_search``: no try was accepted).
    Under torchrun the closure returns this process's share of the global batch's loss (its mean
    loss times its share of the batch); losses and gradients are summed over the processes here.
    """

    def __init__(self, params, basis, buffers=(), *, sigma=0.4, shrink=0.4, max_search=20,
                 alpha=0.0, gamma=0.9, curvature_eps=1e-20):
        defaults = dict(sigma=sigma, shrink=shrink, max_search=max_search, alpha=alpha,
                        gamma=gamma, curvature_eps=curvature_eps)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("PBFGS takes one parameter group: the subspace couples all parameters")
        self._params = self.param_groups[0]["params"]
        dim = sum(p.numel() for p in self._params)
        if basis.shape[1] != dim:
            raise ValueError(f"basis has {basis.shape[1]} columns, the parameters {dim} numbers")
        first = self._params[0]
        self.basis = basis.to(device=first.device, dtype=first.dtype)
        self._buffers = list(buffers)

    @property
    def _bfgs(self):
        """The optimizer's state, kept with the first parameter's as torch.optim.LBFGS does."""
        state = self.state[self._params[0]]
        if "H" not in state:
            k = self.basis.shape[0]
            state.update(H=torch.eye(k, dtype=self.basis.dtype, device=self.basis.device),
                         s_last=None, g_last=None, momentum=None, search_steps=[],
                         skipped_pairs=0, iterations=0)
        return state

    @property
    def H(self):
        return self._bfgs["H"]

    @property
    def search_steps(self):
        return self._bfgs["search_steps"]

    @property
    def skipped_pairs(self):
        """Non-finite curvature pairs left out of H (for instance after an overflow)."""
        return self._bfgs["skipped_pairs"]

    def _weights(self):
        return _contiguous_span(self._params)

    def _set_weights(self, w0, step, span):
        """w0 + P^T step, written into the parameters."""
        if span is not None:
            torch.addmv(w0, self.basis.T, step, out=span)
        else:
            _scatter_(self._params, torch.addmv(w0, self.basis.T, step))

    @staticmethod
    def _global(loss):
        """The global batch's loss as a float: the sum of the processes' contributions."""
        return distributed.all_reduce_sum_(loss.detach().clone()).item()

    @torch.no_grad()
    def step(self, closure):
        group, state = self.param_groups[0], self._bfgs
        P, alpha = self.basis, group["alpha"]
        with torch.enable_grad():
            loss = closure()
        loss_value = self._global(loss)
        grad = _gradient_vector(self._params)
        if alpha != 0:  # the residual momentum needs the whole summed gradient: D numbers
            distributed.all_reduce_sum_(grad)
        gk = P @ grad
        if alpha == 0:  # otherwise its k subspace coordinates are enough
            distributed.all_reduce_sum_(gk)
        residual = grad - P.T @ gk if alpha != 0 else None
        if state["g_last"] is not None:
            yk, s = gk - state["g_last"], state["s_last"]
            ys = torch.dot(yk, s)
            if not (torch.isfinite(ys) and torch.isfinite(yk).all()):
                state["skipped_pairs"] += 1
            elif ys > group["curvature_eps"]:
                state["H"] = bfgs_inverse_update(state["H"], s, yk)
        state["g_last"] = gk
        direction = -(state["H"] @ gk)
        descent = torch.dot(gk, direction).item()

        span = self._weights()
        w0 = span.clone() if span is not None else torch.cat([p.reshape(-1) for p in self._params])
        saved = [b.clone() for b in self._buffers]
        step, shrinks = direction, 0
        while shrinks < group["max_search"]:
            self._set_weights(w0, step, span)
            trial = self._global(closure())
            for b, value in zip(self._buffers, saved):
                b.copy_(value)
            if trial < loss_value + group["sigma"] * descent:
                break
            shrinks += 1
            descent *= group["shrink"]
            step = step * group["shrink"]
        state["search_steps"].append(shrinks)
        state["s_last"] = step

        self._set_weights(w0, step, span)
        if alpha != 0:
            m = state["momentum"]
            state["momentum"] = residual if m is None else group["gamma"] * m + residual
            weights = span if span is not None else torch.cat([p.reshape(-1) for p in self._params])
            weights.add_(state["momentum"], alpha=-alpha)
            if span is None:
                _scatter_(self._params, weights)
        state["iterations"] += 1
        return loss
