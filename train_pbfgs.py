"""Step 3a of DLDR: P-BFGS, a quasi-Newton method in the subspace of the SGD trajectory.

Builds the basis from samples params_start..params_end-1 of --save-dir, restarts from sample
params_start and trains with P-BFGS, entirely in memory. Writes results_pbfgs.json, PBFGS.pt and
checkpoint_pbfgs.pt (with --basis random: results_pbfgs_random.json, PBFGS_random.pt, ...).

    python -u train_pbfgs.py --epochs 20 --datasets CIFAR10 --params_start 0 --params_end 81 \
        --batch-size 1024 --n_components 40 --arch resnet20 --save-dir save_resnet20
"""
import os
import time

import torch
import torch.nn.functional as F

import utils


class PBFGS:
    """P-BFGS (Li et al., TPAMI 2022): BFGS on the coordinates of a k-dimensional subspace.

    ``basis`` is a (k, D) matrix with orthonormal rows spanning the subspace. One iteration:
    project the gradient g_k = P g; update the k x k inverse-Hessian estimate H by BFGS with the
    last pair (s, y) when y^T s > curvature_eps; direction d = -H g_k; Armijo backtracking on the
    batch's loss (accept when f(w + P^T s) < f(w) + sigma * g_k^T s, else s <- shrink * s, at
    most ``max_search`` tries, the last shrunken step taken anyway); then w <- w + P^T s, minus
    ``alpha`` times a momentum (factor ``gamma``) of the gradient's residual outside the subspace.

    Line-search forwards run in train mode, as the authors' did, and every buffer (BatchNorm
    statistics) is restored after each try, as their reload from disk did.

    Under torchrun each process holds its part of the global batch: gradients are summed over
    the processes and every loss (the batch's, and each line-search try's) is the global batch's
    before any decision, so all processes take the same step and keep the same H.
    """

    def __init__(self, model, basis, criterion=F.cross_entropy, sigma=0.4, shrink=0.4,
                 max_search=20, alpha=0.0, gamma=0.9, curvature_eps=1e-20, flat=None, amp=None,
                 log=None, before_forward=None):
        self.model = model
        self.flat = flat if flat is not None else utils.FlatParameters(model)
        if basis.shape[1] != self.flat.data.numel():
            raise ValueError(f"basis has {basis.shape[1]} columns, the model {self.flat.data.numel()} "
                             "trainable parameters")
        self.basis = basis.to(device=self.flat.data.device, dtype=self.flat.data.dtype)
        self.criterion = criterion
        self.sigma, self.shrink, self.max_search = sigma, shrink, max_search
        self.alpha, self.gamma, self.curvature_eps = alpha, gamma, curvature_eps
        self.amp = amp
        self.log = log or (lambda msg: None)
        self.before_forward = before_forward or (lambda: None)
        k = basis.shape[0]
        self.H = torch.eye(k, dtype=self.basis.dtype, device=self.basis.device)
        self.s_last = None          # last step, subspace coordinates
        self.g_last = None          # last projected gradient
        self.momentum = None        # residual-gradient momentum (only with alpha != 0)
        self.search_steps = []      # shrinks per iteration (max_search: no try was accepted)
        self.skipped_pairs = 0      # non-finite curvature pairs left out of H
        self.iterations = 0
        self.last_output = None

    def _loss(self, inputs, targets, share=1.0):
        """This process's contribution to the batch loss: its mean loss times its share (1.0 in a
        single process, where the product is exact)."""
        self.before_forward()
        with utils.autocast(inputs.device, self.amp):
            output = self.model(inputs)
        return self.criterion(utils.full_precision(output), targets) * share, output

    @staticmethod
    def _global(loss):
        """The global batch's loss as a float: the sum of the processes' contributions."""
        return utils.all_reduce_sum_(loss.detach().clone()).item()

    def step(self, inputs, targets):
        """One P-BFGS iteration on one batch; returns the batch loss before the step."""
        return self.step_accumulated([(inputs, targets)])

    def step_accumulated(self, batches):
        """One iteration with the gradient averaged over ``batches`` (the authors' --accumulate).

        The Armijo test uses the loss of the last batch, as the authors' code did.
        """
        self.model.train()
        self.flat.zero_grad()
        for inputs, targets in batches:
            share = utils.global_batch_share(targets.shape[0], inputs.device)
            loss, output = self._loss(inputs, targets, share)
            loss.backward()
        grad = self.flat.grad / len(batches) if len(batches) > 1 else self.flat.grad
        self.last_output = output.detach().clone()  # CUDA graphs may reuse the output buffer
        loss_value = self._global(loss)
        self.update(grad, loss_value, inputs, targets, share)
        return loss_value

    @torch.no_grad()
    def update(self, grad, loss_value, inputs, targets, share=1.0):
        """The P-BFGS update from a full gradient ``grad`` (D,) at the current point. Under
        torchrun ``grad`` is this process's part (its loss weighted by ``share``, its part of the
        batch (inputs, targets)) and is summed over the processes here: in place when --alpha
        needs the whole gradient, else only its k subspace coordinates."""
        P = self.basis
        if self.alpha != 0:  # the residual momentum needs the whole summed gradient: D numbers
            utils.all_reduce_sum_(grad)
        gk = P @ grad
        if self.alpha == 0:  # otherwise its k subspace coordinates are enough
            utils.all_reduce_sum_(gk)
        if self.g_last is not None:
            yk = gk - self.g_last
            ys = torch.dot(yk, self.s_last)
            if not (torch.isfinite(ys) and torch.isfinite(yk).all()):
                self.skipped_pairs += 1
                self.log(f"P-BFGS: skipped a non-finite curvature pair at iteration {self.iterations}")
            elif ys > self.curvature_eps:
                rho = 1.0 / ys
                t = torch.eye(len(gk), dtype=P.dtype, device=P.device) - rho * torch.outer(yk, self.s_last)
                self.H = t.T @ self.H @ t + rho * torch.outer(self.s_last, self.s_last)
        self.g_last = gk
        direction = -(self.H @ gk)
        descent = torch.dot(gk, direction).item()

        w0 = self.flat.data.clone()
        buffers = [b.clone() for b in self.model.buffers()]
        step, shrinks = direction, 0
        while shrinks < self.max_search:
            torch.addmv(w0, P.T, step, out=self.flat.data)
            trial, _ = self._loss(inputs, targets, share)
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
            if self._global(trial) < loss_value + self.sigma * descent:
                break
            shrinks += 1
            descent *= self.shrink
            step = step * self.shrink
        self.search_steps.append(shrinks)
        self.s_last = step

        torch.addmv(w0, P.T, step, out=self.flat.data)
        if self.alpha != 0:
            residual = grad - P.T @ gk
            self.momentum = residual if self.momentum is None else self.gamma * self.momentum + residual
            self.flat.data.add_(self.momentum, alpha=-self.alpha)
        self.iterations += 1

    def state_dict(self):
        return {"H": self.H, "s_last": self.s_last, "g_last": self.g_last,
                "momentum": self.momentum, "search_steps": list(self.search_steps),
                "skipped_pairs": self.skipped_pairs, "iterations": self.iterations}

    def load_state_dict(self, state):
        device, dtype = self.basis.device, self.basis.dtype
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        self.H, self.s_last, self.g_last = move(state["H"]), move(state["s_last"]), move(state["g_last"])
        self.momentum = move(state["momentum"])
        self.search_steps = list(state["search_steps"])
        self.skipped_pairs, self.iterations = state["skipped_pairs"], state["iterations"]


def build_parser():
    p = utils.ArgumentParser(description="DLDR step 3a: P-BFGS in the trajectory's subspace")
    utils.add_common_arguments(p, epochs=100, lr=1.0, batch_size=1024)
    utils.add_subspace_arguments(p)
    p.add_argument("--alpha", default=0.0, type=float, metavar="A",
                   help="step size of the momentum on the gradient outside the subspace (default: 0)")
    p.add_argument("--gamma", default=0.9, type=float, metavar="G",
                   help="momentum factor of that residual (default: 0.9)")
    p.add_argument("--accumulate", default=1, type=utils.positive_int, metavar="N",
                   help="batches whose gradients are averaged per P-BFGS iteration (default: 1)")
    return p


def train_epoch(opt, loader, epoch, args, epochs_left_after):
    n_iters = -(-len(loader) // args.accumulate)
    progress = utils.EpochProgress(epoch, n_iters, args.print_freq, epochs_left_after)
    batches, it = [], 0
    for i, batch in enumerate(loader):
        batches.append(batch)
        if len(batches) < args.accumulate and i < len(loader) - 1:
            continue
        loss = opt.step_accumulated(batches)
        targets = batches[-1][1]
        loss_t = torch.tensor(loss)
        progress.check_finite(loss_t, it)
        progress.update(it, loss_t, opt.last_output, targets)
        batches, it = [], it + 1
    return progress.finish()


def main(argv=None):
    args = build_parser().parse_args(argv)
    results_name, final_name, ckpt_name = utils.subspace_output_names(args, "pbfgs")
    device = utils.init_distributed(utils.validate_subspace_args(args, ckpt_name))
    if args.lr != 1.0:
        utils.log(f"note: --lr {args.lr} is ignored; P-BFGS steps are set by the line search "
                  "(the authors' optimizer used lr 1)")
    utils.seed_everything(args.randomseed)
    model, basis, ratios, train_loader, test_loader = utils.prepare_subspace_run(args, device)
    flat = utils.FlatParameters(model)  # before compiling: the compiled graph sees these views
    step_model = utils.compile_model(model, args, device)
    opt = PBFGS(step_model, basis, flat=flat, alpha=args.alpha, gamma=args.gamma, amp=args.amp,
                log=utils.log, before_forward=lambda: utils.mark_step(args, device))
    results = utils.Results(os.path.join(args.save_dir, results_name), "pbfgs", args,
                            {"explained_variance_ratio": ratios, "basis": args.basis})
    start_epoch, best_prec1 = 0, 0.0
    w_start = opt.flat.data.clone()  # sample params_start: coordinates are taken from here
    if args.evaluate:
        loss, prec = utils.evaluate(model, test_loader, args.amp)
        utils.log_test(prec, loss)
        return
    stateful = {"pbfgs": opt}
    if args.resume:
        start_epoch, best_prec1 = utils.resume_run(args, ckpt_name, model, stateful, train_loader,
                                                   results)
    else:
        loss, prec = utils.evaluate(model, test_loader, args.amp)
        utils.log(f"=> start (sample {args.params_start}):")
        utils.log_test(prec, loss)
        results.add(epoch=0, test_loss=loss, test_acc=prec, time=0.0, coords=[0.0] * len(basis))

    run_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        shrinks_before = len(opt.search_steps)
        try:
            progress = train_epoch(opt, train_loader, epoch, args, args.epochs - epoch - 1)
        except utils.NonFiniteLoss as e:
            raise SystemExit(f"error: {e}; the last good state is in {ckpt_name}")
        train_time = time.time() - epoch_start
        test_loss, prec1 = utils.evaluate(step_model, test_loader, args.amp)
        utils.log_test(prec1, test_loss)
        steps = opt.search_steps[shrinks_before:]
        best_prec1 = max(best_prec1, prec1)
        results.add(epoch=epoch + 1, train_loss=progress.loss, train_acc=progress.accuracy,
                    test_loss=test_loss, test_acc=prec1, train_time=train_time,
                    time=time.time() - epoch_start, mean_shrinks=sum(steps) / max(len(steps), 1),
                    skipped_pairs=opt.skipped_pairs,
                    coords=(basis @ (opt.flat.data - w_start)).tolist())
        ckpt = utils.checkpoint_state(epoch + 1, model, stateful, train_loader, best_prec1, results)
        utils.atomic_torch_save(ckpt, os.path.join(args.save_dir, ckpt_name))
    utils.save_model(model, os.path.join(args.save_dir, final_name))
    utils.log(f"=> P-BFGS done: best Prec@1 {best_prec1:.3f}, total time "
              f"{utils.format_eta(time.time() - run_start)}, model in "
              f"{os.path.join(args.save_dir, final_name)}")
    return model


if __name__ == "__main__":
    utils.run_main(main)
