"""P-SGD as train_psgd.py runs it, against the authors' update (nblt/DLDR train_psgd.py, P_SGD)
written out here in float64: g_k = P g, the gradient replaced by P^T g_k, then SGD with momentum
0.9 and no weight decay, lr 1, the LR x0.1 at epochs 30 and 50. Independent of dldr/optim.py: plain
autograd on a copy of the model, two matrix products, the momentum update by hand."""
import copy

import torch
import torch.nn.functional as F

import train_psgd
from conftest import run_here, write_mnist

LR, MOMENTUM, MILESTONES = 1.0, 0.9, (30, 50)  # the authors' defaults, not the parser's
START_EPOCH, EPOCHS = 29, 31  # two epochs with the first milestone between them
# 16 training images of noise in MNIST's format, 2 steps of 8 per epoch, 8 test images (the
# evaluations cost most): a float64 run in a second or two
DATA = ["--datasets", "MNIST", "--arch", "resnet8", "--device", "cpu", "--batch-size", "8",
        "--print-freq", "100"]


class RecordingLoader:
    """The run's own loader, keeping a copy of every batch it hands out."""

    def __init__(self, loader, batches):
        self.loader, self.batches = loader, batches

    def __iter__(self):
        for x, y in self.loader:
            self.batches.append((x.clone(), y.clone()))
            yield x, y

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def weights(model):
    return torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])


def test_psgd_run_matches_the_authors_update_step_by_step(tmp_path, monkeypatch):
    write_mnist(tmp_path / "data", n_train=16, n_test=8)
    folder = tmp_path / "run"
    data = [*DATA, "--data-root", tmp_path / "data", "--save-dir", folder]
    assert run_here("train_sgd.py", *data, "--epochs", 4, "--lr", 0.05) == 0  # samples 0..4
    epochs, after_step = [], []  # batches per epoch; (weights, BN buffers) after every step
    seen = {}
    real_train_epoch = train_psgd.train_epoch

    def train_epoch(model, flat, basis, loader, optimizer, *rest):
        if not seen:  # the restart, as the first step sees it, and the run's basis
            seen.update(model=copy.deepcopy(model), basis=basis.clone())
            optimizer.register_step_post_hook(lambda *_: after_step.append(
                (weights(model).clone(), [b.clone() for b in model.buffers()])))
        epochs.append([])
        return real_train_epoch(model, flat, basis, RecordingLoader(loader, epochs[-1]),
                                optimizer, *rest)

    monkeypatch.setattr(train_psgd, "train_epoch", train_epoch)
    # The authors' defaults (no --lr, --momentum, --milestones), in float64; the run starts at
    # epoch 29 so that their milestone 30 falls between its two epochs.
    assert run_here("train_psgd.py", *data, "--params_start", 0, "--params_end", 5,
                    "--n_components", 3, "--dtype", "float64", "--start-epoch", START_EPOCH,
                    "--epochs", EPOCHS) == 0

    P = seen["basis"]
    assert P.dtype == torch.float64 and P.shape[0] == 3
    assert torch.allclose(P @ P.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    ref = seen["model"]
    params = [p for _, p in ref.named_parameters()]
    for p in params:  # own storage, not views of the run's flat buffer
        p.data, p.grad = p.data.clone(), None
    assert all(p.requires_grad for p in params)
    w_start = weights(ref).clone()
    buf, step, lrs = None, 0, []
    for epoch, batches in zip(range(START_EPOCH, EPOCHS), epochs, strict=True):
        lr = LR * 0.1 ** sum(epoch >= m for m in MILESTONES)
        assert len(batches) >= 2
        for x, y in batches:
            ref.train()
            loss = F.cross_entropy(ref(x.double()), y)
            g = torch.cat([d.reshape(-1) for d in torch.autograd.grad(loss, params)])
            g_k = P @ g
            g = P.T @ g_k
            buf = g.clone() if buf is None else MOMENTUM * buf + g
            with torch.no_grad():
                w = weights(ref) - lr * buf
                offset = 0
                for p in params:
                    p.copy_(w[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
            run_w, run_buffers = after_step[step]
            moved = (w - w_start).abs().max()
            assert moved > 0
            # Rounding only: relative to the distance moved from the restart
            assert (run_w - w).abs().max() <= 1e-12 * moved, (epoch, step)
            for b, rb in zip(run_buffers, ref.buffers(), strict=True):  # the same batches, in order
                assert torch.allclose(b, rb, rtol=1e-12, atol=1e-15), (epoch, step)
            lrs.append(lr)
            step += 1
    assert step == len(after_step)
    assert sorted(set(lrs)) == [0.1, 1.0] and lrs[0] == 1.0  # the milestone fell inside
