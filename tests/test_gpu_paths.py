"""What a GPU run depends on that a CPU can show: stochastic depth's draws, the host-side batch
shares, --device cuda:N, --deterministic, the basis's memory and the recorded peak memory."""
import json

import pytest
import torch

import dldr.batches
import dldr.training
import models
import utils
from dldr.subspace import SubspaceRun


def test_stochastic_depth_draws_on_the_host_from_a_seeded_generator():
    """The draws come from the network's CPU generator, seeded by torch.manual_seed: the same
    seed gives the same blocks; no device tensor is read (a meta-device forward, where any
    .item() raises, runs); the weights are those the global generator gave before."""
    from tiny_models import tiny_stochasticdepth
    torch.manual_seed(3)
    a = tiny_stochasticdepth().train()
    torch.manual_seed(3)
    b = tiny_stochasticdepth().train()
    assert a.random_generator.device.type == "cpu"
    x = torch.randn(4, 3, 32, 32)
    patterns = set()
    for _ in range(8):
        assert torch.equal(a(x), b(x))
        keep = tuple(block.survives for block in a.blocks())
        assert keep == tuple(block.survives for block in b.blocks())
        patterns.add(keep)
    assert len(patterns) > 1  # blocks are really dropped, and not always the same ones
    a.to("meta")(torch.empty(2, 3, 32, 32, device="meta"))
    # the generator is drawn after the weights: the global stream built the same weights
    torch.manual_seed(3)
    plain = models.stochasticdepth.StochasticDepthResNet(
        models._blocks_resnet.BasicBlock, (1, 1, 1, 1), 10, bias=True, widths=(4, 8, 8, 8))
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), b.parameters()))


def _world(monkeypatch, rank):
    monkeypatch.setattr(dldr.batches, "world", lambda: (rank, 2))
    monkeypatch.setattr(dldr.distributed, "world", lambda: (rank, 2))


@pytest.mark.parametrize("kind", ["memory", "dataloader"])
def test_batch_shares_are_known_on_the_host(monkeypatch, kind):
    """Under 2 processes, each process's share of every training batch is computed from sizes
    (no tensor, no collective), and the shares of the two processes add up to 1."""
    data = utils.load_synthetic(True, n_train=37)
    shares = {}
    for rank in (0, 1):
        _world(monkeypatch, rank)
        loader = utils.make_loader(data, 8, torch.device("cpu"), shuffle=True, kind=kind,
                                   workers=0, seed=1)
        shares[rank] = [utils.global_batch_share(loader, i, len(y))
                        for i, (x, y) in enumerate(loader)]
        assert all(isinstance(s, float) for s in shares[rank])
    assert len(shares[0]) == len(shares[1]) > 1
    assert all(a + b == pytest.approx(1.0) for a, b in zip(shares[0], shares[1]))
    monkeypatch.undo()
    assert utils.global_batch_share(None, 0, 5) == 1.0  # one process: exactly 1


def test_device_index_is_set_and_checked(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert utils.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]
    with pytest.raises(utils.UsageError, match=r"--device cuda:2: this machine has 2 CUDA devices "
                                               r"\(cuda:0..cuda:1\)"):
        utils.resolve_device("cuda:2")


def test_deterministic_sets_and_run_main_gives_back(tmp_path, monkeypatch):
    """--deterministic turns on torch's deterministic algorithms and cuDNN's, and keeps
    compile_model from turning autotuning on; run_main restores the caller's settings."""
    import train_sgd
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}

    def spy(*args, **kwargs):
        seen["deterministic"] = torch.are_deterministic_algorithms_enabled()
        seen["cudnn"] = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        raise utils.UsageError("stop here")

    monkeypatch.setattr(utils, "load_data", spy)
    with pytest.raises(SystemExit):
        utils.run_main(train_sgd.main, ["--datasets", "DIGITS", "--arch", "resnet8", "--device",
                                        "cpu", "--deterministic", "--save-dir", str(tmp_path)])
    assert seen == {"deterministic": True, "cudnn": (True, False)}
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic
    try:
        utils.make_deterministic(True)
        dldr.training.compile_model(torch.nn.Linear(1, 1), torch.device("cuda"), enabled=False)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_subspace_run_releases_the_float64_basis_and_records_peak_memory(digits_pbfgs):
    """The (k, D) float64 basis is dropped once the working copy exists; every results file
    says the peak device memory (None on the CPU, where torch does not count it)."""
    from conftest import DIGITS_PBFGS
    import train_pbfgs
    args = train_pbfgs.build_parser().parse_args([*map(str, DIGITS_PBFGS), "--save-dir",
                                                  str(digits_pbfgs), "--output-tag", "mem"])
    run = SubspaceRun("pbfgs", "P-BFGS", utils.SubspaceOptions.from_args(args), {})
    run.prepare()
    basis = run.build_basis()
    assert basis.matrix.dtype == torch.float64
    run.restart()
    assert basis.matrix is None and run.basis_matrix.dtype == torch.float32
    results = json.loads((digits_pbfgs / "results_pbfgs.json").read_text())
    assert "peak_memory_bytes" in results and results["peak_memory_bytes"] is None
