"""Sample files: atomic writes, safe loading, the authors' DataParallel layout, clear errors."""
import os
import pickle

import pytest
import torch

import models
import utils
from conftest import Exploit

vector = torch.nn.utils.parameters_to_vector


def _model(seed=0, arch="resnet20"):
    torch.manual_seed(seed)
    return models.build(arch, 10)


def test_samples_round_trip_in_named_parameters_order(tmp_path):
    vectors = []
    for e in range(3):
        m = _model(seed=e)
        utils.save_sample(m, str(tmp_path), e)
        vectors.append(vector(m.parameters()))
    assert utils.available_samples(str(tmp_path)) == [0, 1, 2]
    matrix = utils.load_sample_matrix(str(tmp_path), _model(), range(3), "resnet20")
    assert torch.equal(matrix, torch.stack(vectors))
    # Parameters only: BatchNorm running statistics are not part of the vector.
    n_params = sum(p.numel() for p in _model().parameters())
    assert matrix.shape == (3, n_params)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "0.pt").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_authors_dataparallel_samples_load(tmp_path):
    m = _model(seed=1)
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "0.pt")
    torch.save(torch.nn.DataParallel(_model(seed=2)).state_dict(), tmp_path / "1.pt")
    matrix = utils.load_sample_matrix(str(tmp_path), _model(), range(2), "resnet20")
    assert torch.equal(matrix[0], vector(m.parameters()))
    assert torch.equal(matrix[1], vector(_model(seed=2).parameters()))
    fresh = utils.load_sample_into(_model(seed=9), str(tmp_path / "0.pt"), "resnet20")
    assert torch.equal(vector(fresh.parameters()), vector(m.parameters()))


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    m = _model()
    utils.save_sample(m, str(tmp_path), 0)
    before = (tmp_path / "0.pt").read_bytes()

    def broken_save(obj, f):
        f.write(b"half a sample")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        utils.save_sample(_model(seed=5), str(tmp_path), 0)
    assert (tmp_path / "0.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["0.pt"]


def test_missing_epoch_names_the_epochs_present(tmp_path):
    for e in (0, 1, 2, 5):
        utils.save_sample(_model(), str(tmp_path), e)
    with pytest.raises(utils.UsageError, match=r"sample 3\.pt is missing .*samples present: 0\.\.2, 5"):
        utils.check_sample_range(str(tmp_path), range(6), 6)


def test_truncated_sample_error_names_the_file(tmp_path):
    utils.save_sample(_model(), str(tmp_path), 0)
    data = (tmp_path / "0.pt").read_bytes()
    (tmp_path / "0.pt").write_bytes(data[:len(data) // 3])
    with pytest.raises(utils.UsageError, match=r"0\.pt: not a loadable sample or checkpoint \(truncated"):
        utils.load_sample_matrix(str(tmp_path), _model(), range(1), "resnet20")


def test_samples_of_another_architecture_are_refused(tmp_path):
    utils.save_sample(_model(arch="resnet32"), str(tmp_path), 0)
    with pytest.raises(utils.UsageError, match=r"0\.pt: .*not of --arch resnet20"):
        utils.load_sample_matrix(str(tmp_path), _model(), range(1), "resnet20")


def test_crafted_checkpoint_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Exploit(marker)}, path, pickle_protocol=2)
    with open(tmp_path / "plain.pkl", "wb") as f:  # a bare pickle too, as old scripts wrote
        pickle.dump(Exploit(marker), f)
    for p in (path, tmp_path / "plain.pkl"):
        with pytest.raises(utils.UsageError, match="refused: it holds more than tensors"):
            utils.safe_load(str(p))
    assert not marker.exists()


def test_describe_epochs():
    assert utils.describe_epochs([]) == "none"
    assert utils.describe_epochs([0, 1, 2, 4, 6, 7]) == "0..2, 4, 6..7"
