"""Drop-in for the authors' scripts: their log lines parsed with the same patterns as a run of
theirs, their flags and defaults, and sample folders written in their layout."""
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

import models
import train_pbfgs
import train_psgd
import train_sgd
import utils
from conftest import ROOT, SEED, run_here, write_cifar
from dldr.cli import recorded_defaults

SHARED_LOG = os.path.join(ROOT, "..", "shared", "reference", "authors_log.md")
F3, F4 = r"\d+\.\d{3}", r"\d+\.\d{4}"
# How users parse the authors' logs (grep, awk), one pattern per line kind, anchored at the start
# only: this project may add fields after the authors' ones.
KINDS = {
    "epoch": rf"^Epoch: \[\d+\]\[\d+/\d+\]\tTime {F3} \({F3}\)\tData {F3} \({F3}\)\t"
             rf"Loss {F4} \({F4}\)\tPrec@1 {F3} \({F3}\)",
    "test": rf"^Test: \[\d+/\d+\]\tTime {F3} \({F3}\)\tLoss {F4} \({F4}\)\tPrec@1 {F3} \({F3}\)",
    "prec": rf"^ \* Prec@1 {F3}",
    "lr": r"^current lr \d\.\d{5}e[+-]\d\d$",
    "epoch_time": rf"^Total time for epoch \[\d+\] : {F3}$",
    "start": r"^Start training:  \d+ -> \d+$",
    "seed": r"^Random Seed: \d+$",
    "method": r"^P-SGD$",
    "params": r"^params: from \d+ to \d+$",
    "W": r"^W: \(\d+, \d+\)$",
    "ratio": r"^ratio: \[",
    "P": r"^P: \(\d+, \d+\)$",
    "accumulate": r"^grad accumulate: \d+$",
    "train": r"^Train: \(\d+, \d+\)$",
    "total": r"^total time: \d+\.\d+(e-\d+)?$",
    "train_loss": r"^train loss:  \[",
    "train_err": r"^train err:  \[",
    "train_acc": r"^train acc:  \[",
    "test_loss": r"^test loss:  \[",
    "test_err": r"^test err:  \[",
    "test_acc": r"^test acc:  \[",
    "time": r"^time:  \[",
    "best": r"^best_prec1: \d+(\.\d+)?$",
    "epochs_time": r"^epoch time: \[",
}
# What each of the authors' three scripts prints (nblt/DLDR, the version whose print lines these
# are), besides the save dir's name.
SCRIPT_KINDS = {
    "train_sgd.py": {"start", "lr", "epoch", "epoch_time", "test", "prec", "train_loss",
                     "train_err", "test_loss", "test_err", "time"},
    "train_pbfgs.py": {"seed", "params", "W", "ratio", "P", "accumulate", "train", "epoch", "test",
                       "prec", "total", "train_loss", "train_acc", "test_loss", "test_acc", "best",
                       "epochs_time"},
    "train_psgd.py": {"method", "params", "W", "ratio", "P", "train", "epoch", "test", "prec",
                      "total", "train_loss", "train_acc", "test_loss", "test_acc", "best"},
}
# Lines of the older version of the authors' scripts in the shared excerpt, which today's do not
# print; "..." marks the excerpt's cuts.
OLDER = [r"^randomseed: \d+$", r"^Files already downloaded and verified$", r"^\(\d+, \d+\)$",
         r"^params_end \d+$", r"^alpha: ", r"^param start:  \d+$", r"^train batch size!!! \d+$",
         r"^\.\.\.$"]


def classify(lines, save_dir=None):
    """{kind: count} of a log, and the lines that are of no known kind."""
    counts, unknown, in_ratio = {}, [], False
    for line in lines:
        if in_ratio:  # numpy's print of a long array continues on further lines
            in_ratio = "]" not in line
            continue
        kind = next((k for k, pattern in KINDS.items() if re.match(pattern, line)), None)
        if kind is None and line == save_dir:
            kind = "save_dir"
        if kind is None:
            if not line.startswith("=> "):
                unknown.append(line)
            continue
        counts[kind] = counts.get(kind, 0) + 1
        in_ratio = kind == "ratio" and "]" not in line
    return counts, unknown


def fields(line):
    """awk's fields of a progress line: the authors' values stand at the same positions."""
    f = line.split()
    return {"batch_time": f[3], "data_time": f[6], "loss": f[9], "loss_avg": f[10].strip("()"),
            "prec": f[12], "prec_avg": f[13].strip("()")}


def test_the_patterns_parse_the_authors_own_log():
    text = open(SHARED_LOG).read()
    block = text.split("```\n")[1].split("```")[0]
    lines = [line for line in block.splitlines() if line]
    counts, unknown = classify(lines)
    assert [u for u in unknown if not any(re.match(p, u) for p in OLDER)] == []
    assert {"epoch", "test", "prec", "lr", "W", "P", "train", "train_loss", "test_err",
            "test_acc"} <= set(counts)
    for line in lines:
        if line.startswith("Epoch: "):
            assert all(float(v) >= 0 for v in fields(line).values())


@pytest.fixture(scope="module")
def logs(tmp_path_factory, data_args):
    """Short runs of the three scripts, and of each with -e, as their stdout's lines."""
    save = tmp_path_factory.mktemp("logs")
    common = [*data_args, "--print-freq", 2, "--save-dir", save]
    sub = ["--params_end", 3, "--n_components", 2]
    runs = {"train_sgd.py": [*common, "--epochs", 2, "--batch-size", 32],
            "train_pbfgs.py": [*common, *sub, "--epochs", 2, "--batch-size", 64, "--accumulate", 1],
            "train_psgd.py": [*common, *sub, "--epochs", 2, "--batch-size", 32]}
    out = {}
    for script, argv in runs.items():
        for evaluate in (False, True):
            with CaptureStdout() as captured:
                assert run_here(script, *argv, *(["-e"] if evaluate else [])) == 0
            out[script, evaluate] = captured.lines
    return str(save), out


class CaptureStdout:
    """The lines a script prints, read from sys.stdout while it runs in this interpreter."""

    def __enter__(self):
        import contextlib
        import io
        self.buffer = io.StringIO()
        self.redirect = contextlib.redirect_stdout(self.buffer)
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self.redirect.__exit__(*exc)
        self.lines = self.buffer.getvalue().splitlines()


@pytest.mark.parametrize("script", list(SCRIPT_KINDS))
def test_each_script_prints_every_kind_of_the_authors_lines_and_nothing_else(logs, script):
    save, out = logs
    counts, unknown = classify(out[script, False], save)
    assert unknown == [], "a line of no authors' kind that does not start with '=> '"
    missing = SCRIPT_KINDS[script] - set(counts)
    assert not missing, f"{script} lacks the authors' {sorted(missing)}"
    assert counts["save_dir"] == 1 and out[script, False][0 if script == "train_sgd.py" else 1] == save
    assert counts["prec"] == 2, "one ' * Prec@1' line per epoch, none else"
    for line in out[script, False]:
        if line.startswith("Epoch: "):
            values = fields(line)
            assert float(values["prec_avg"]) <= 100 and float(values["loss"]) > 0
            assert re.search(r"\t\d+ img/s\tETA \d+:\d\d:\d\d$", line)  # ours, after theirs
    evaluate, unknown = classify(out[script, True], save)
    assert unknown == [] and evaluate["prec"] == 1 and evaluate.get("test", 0) >= 1
    assert "epoch" not in evaluate


def test_end_of_run_lists_hold_the_results(logs):
    save, out = logs
    results = json.load(open(os.path.join(save, "results_pbfgs.json")))["epochs"][1:]
    lines = out["train_pbfgs.py", False]
    test_acc = next(line for line in lines if line.startswith("test acc:  ["))
    assert eval(test_acc.split(":  ", 1)[1]) == [e["test_acc"] for e in results]
    best = next(line for line in lines if line.startswith("best_prec1: "))
    assert float(best.split(": ")[1]) == max(e["test_acc"] for e in results)
    sgd = json.load(open(os.path.join(save, "results_sgd.json")))["epochs"][1:]
    err = next(line for line in out["train_sgd.py", False] if line.startswith("test err:  ["))
    assert eval(err.split(":  ", 1)[1]) == pytest.approx([1 - e["test_acc"] / 100 for e in sgd])


# ---- flags -------------------------------------------------------------------------------------

# (spellings, dest, the authors' default) of every flag of the authors' three scripts
COMMON_FLAGS = [
    (["--datasets"], "datasets", "CIFAR10"), (["-j", "--workers"], "workers", 4),
    (["--start-epoch", "--start_epoch"], "start_epoch", 0),
    (["-b", "--batch-size", "--batch_size"], "batch_size", 128),
    (["--weight-decay", "--weight_decay", "--wd"], "weight_decay", 1e-4),
    (["-p", "--print-freq", "--print_freq"], "print_freq", 50), (["--resume"], "resume", ""),
    (["-e", "--evaluate"], "evaluate", False), (["--pretrained"], "pretrained", False),
    (["--half"], "half", False), (["--save-dir", "--save_dir"], "save_dir", "save_temp"),
    (["--save-every", "--save_every"], "save_every", 10), (["--randomseed"], "randomseed", 1),
    (["--corrupt"], "corrupt", 0.0), (["--smalldatasets"], "smalldatasets", None),
]
SCRIPT_FLAGS = {
    train_sgd: COMMON_FLAGS + [
        (["--arch", "-a"], "arch", "resnet20"),  # theirs had none (and failed without one)
        (["--optimizer"], "optimizer", "sgd"), (["--epochs"], "epochs", 200),
        (["--lr", "--learning-rate", "--learning_rate"], "lr", 0.1),
        (["--momentum"], "momentum", 0.9)],
    train_pbfgs: COMMON_FLAGS + [
        (["--arch", "-a"], "arch", "resnet32"), (["--epochs"], "epochs", 100),
        (["--n_components"], "n_components", 40), (["--params_start"], "params_start", 0),
        (["--params_end"], "params_end", 51), (["--alpha"], "alpha", 0.0),
        (["--gamma"], "gamma", 0.9), (["--accumulate"], "accumulate", 1), (["--lr"], "lr", 1.0)],
    train_psgd: COMMON_FLAGS + [
        (["--arch", "-a"], "arch", "resnet32"), (["--epochs"], "epochs", 100),
        (["--n_components"], "n_components", 40), (["--params_start"], "params_start", 0),
        (["--params_end"], "params_end", 51), (["--alpha"], "alpha", 0.0),
        (["--gamma"], "gamma", 0.9), (["--lr"], "lr", 1.0)],
}


OTHER_VALUES = {"datasets": "DIGITS", "arch": "resnet8", "optimizer": "adam", "save_dir": "x",
                "resume": "x.pt", "smalldatasets": "0.5", "corrupt": "0.5"}


@pytest.mark.parametrize("script", list(SCRIPT_FLAGS), ids=lambda m: m.__name__)
def test_every_flag_of_the_authors_is_accepted_with_their_default(script):
    parser = script.build_parser()
    defaults = vars(parser.parse_args([]))
    # The subspace scripts' data flags: the samples' run.json first, the authors' default where
    # the folder has none (theirs never do)
    recorded_defaults(defaults)
    for spellings, dest, default in SCRIPT_FLAGS[script]:
        assert defaults[dest] == default, (dest, defaults[dest])
        if isinstance(default, bool):
            argv, expected = [], True
        else:
            text = OTHER_VALUES.get(dest, "7" if isinstance(default, int) else "0.5")
            argv, expected = [text], type(default)(text) if default not in (None, "") else text
        for flag in spellings:
            got = vars(parser.parse_args([flag, *argv]))
            recorded_defaults(got)
            got = got[dest]
            assert got == (float(expected) if dest in ("smalldatasets", "corrupt") else expected), flag


def test_documented_flag_table_lists_every_authors_flag():
    text = open(os.path.join(ROOT, "docs", "flags.md")).read()
    table = text.split("<!-- flags:start -->")[1].split("<!-- flags:end -->")[0]
    for flags in SCRIPT_FLAGS.values():
        for spellings, _, _ in flags:
            assert f"`{max(spellings, key=len)}`" in table, spellings


def sgd_args(save, *extra):
    return ["--datasets", "DIGITS", "--arch", "resnet8", "--device", "cpu", "--smalldatasets", 0.1,
            "--print-freq", 100, "--batch-size", 32, "--save-dir", save, *extra]


def test_start_epoch_starts_the_loop_and_the_schedule_there(tmp_path, capsys):
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "--epochs", 3, "--start-epoch", 2,
                                               "--milestones", "1")) == 0
    out = capsys.readouterr().out
    assert "Start training:  2 -> 3" in out and "current lr 1.00000e-02" in out
    assert out.count(" * Prec@1") == 1
    assert utils.available_samples(str(tmp_path)) == [2, 3]
    epochs = json.load(open(tmp_path / "results_sgd.json"))["epochs"]
    assert [e["epoch"] for e in epochs] == [2, 3] and epochs[1]["lr"] == pytest.approx(0.01)
    # With --resume the checkpoint's epoch wins, as in the authors' scripts.
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "--epochs", 4, "--start-epoch", 0,
                                               "--milestones", "1", "--resume")) == 0
    assert "Start training:  3 -> 4" in capsys.readouterr().out
    assert utils.available_samples(str(tmp_path)) == [2, 3, 4]


def test_evaluate_with_resume_evaluates_the_resumed_model(tmp_path, capsys):
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "--epochs", 1, "--lr", 0.2)) == 0
    capsys.readouterr()
    trained = json.load(open(tmp_path / "results_sgd.json"))["epochs"]
    assert trained[0]["test_acc"] != trained[1]["test_acc"]  # the two models can be told apart
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "-e", "--resume",
                                               tmp_path / "checkpoint.pt")) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(" * Prec@1"))
    assert float(line.split()[2]) == pytest.approx(trained[1]["test_acc"], abs=1e-3)


def test_adam_takes_the_authors_learning_rate_not_sgds(tmp_path):
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "--epochs", 1, "--optimizer", "adam",
                                               "--lr", 0.1)) == 0
    assert json.load(open(tmp_path / "results_sgd.json"))["epochs"][1]["lr"] == 0.001


@pytest.mark.parametrize("flag", [["--half"], ["--amp", "fp16"]])
def test_pbfgs_refuses_fp16_and_names_bf16(digits_samples, flag, capsys):
    code = run_here("train_pbfgs.py", "--datasets", "DIGITS", "--arch", "resnet8", "--device",
                    "cpu", "--corrupt", 0.1, "--randomseed", SEED, "--params_end", 3,
                    "--n_components", 2, "--save-dir", digits_samples, *flag)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--amp bf16" in err[0] and flag[0] in err[0]


def test_pretrained_is_accepted_and_ignored_for_the_cifar_zoo(tmp_path, capsys):
    assert run_here("train_sgd.py", *sgd_args(tmp_path, "--epochs", 0, "--pretrained")) == 0
    assert "=> --pretrained: no pretrained weights for the CIFAR architecture" in \
        capsys.readouterr().out


def test_pretrained_imagenet_weights_from_the_cache_or_one_line_offline(tmp_path, monkeypatch,
                                                                       capsys):
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    arch = "shufflenet_v2_x0_5"
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    with pytest.raises(utils.UsageError, match=r"--pretrained: cannot fetch torchvision's weights"):
        utils.new_model(arch, "ImageNet", 1000, pretrained=True)  # offline, nothing cached
    torch.manual_seed(3)
    published = torchvision.models.get_model(arch).state_dict()
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(published, cache / os.path.basename(weights.url))
    model = utils.new_model(arch, "ImageNet", 1000, pretrained=True)
    assert all(torch.equal(v, published[k]) for k, v in model.state_dict().items())
    with pytest.raises(utils.UsageError, match="classify 1000 ImageNet classes, the dataset has 3"):
        utils.new_model(arch, "folder", 3, pretrained=True)


def test_psgd_accepts_the_authors_alpha_and_gamma():
    args = train_psgd.build_parser().parse_args(["--alpha", "0.1", "--gamma", "0.5"])
    assert args.alpha == 0.1 and args.gamma == 0.5


def test_resnet8_is_the_authors():
    assert sum(p.numel() for p in models.build("resnet8", 10).parameters()) == 75290


def test_mnist_runs_with_a_cifar_architecture(tmp_path, capsys):
    from conftest import write_mnist
    write_mnist(tmp_path / "data", n_train=64, n_test=20)
    assert run_here("train_sgd.py", "--datasets", "MNIST", "--data-root", tmp_path / "data",
                    "--arch", "resnet8", "--device", "cpu", "--epochs", 1, "--batch-size", 32,
                    "--corrupt", 0.25, "--save-dir", tmp_path / "run", "--print-freq", 1) == 0
    out = capsys.readouterr().out
    assert "MNIST (64 train / 20 test, 10 classes)" in out and "Test: [0/1]" in out  # batch 100
    assert len(json.load(open(tmp_path / "run" / "noisy_labels.json"))["indices"]) == 16


# ---- the authors' sample folders ----------------------------------------------------------------

def authors_validate(model, root):
    """The authors' validate(): torchvision's CIFAR-10 test set through ToTensor and Normalize in a
    DataLoader of 128, top-1 from topk, averaged per image; returns their ' * Prec@1' value."""
    import torchvision
    import torchvision.transforms as T
    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    val = torchvision.datasets.CIFAR10(root=root, train=False,
                                       transform=T.Compose([T.ToTensor(), normalize]))
    loader = torch.utils.data.DataLoader(val, batch_size=128, shuffle=False)
    model.eval()
    total, correct = 0, 0.0
    with torch.no_grad():
        for x, y in loader:
            _, pred = model(x).topk(1, 1, True, True)
            correct += pred.t().eq(y.view(1, -1)).float().sum().item()
            total += len(y)
    return f"{100.0 * correct / total:.3f}"


@pytest.fixture(scope="module")
def authors_folder(tmp_path_factory):
    """A folder as the authors' train_sgd.py leaves it: DataParallel 'module.' keys in 0.pt..3.pt,
    model.th and checkpoint_refine_E.th, no run.json; the test accuracy their log printed after
    each epoch; and the CIFAR-10 archive it was trained on."""
    monkeypatch = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("authors")
    write_cifar(base / "data", False, monkeypatch, n_train=100, n_test=40)
    import torchvision
    import torchvision.transforms as T
    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train = torchvision.datasets.CIFAR10(root=str(base / "data"), train=True, transform=T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, 4), T.ToTensor(), normalize]))
    torch.manual_seed(1)
    model = torch.nn.DataParallel(models.build("resnet8", 10))
    sgd = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    folder, logged = base / "save_resnet8", {}
    folder.mkdir()
    torch.save(model.state_dict(), folder / "0.pt")
    torch.save({"epoch": 0, "state_dict": model.state_dict(), "best_prec1": 0},
               folder / "checkpoint_refine_0.th")
    for epoch in range(3):
        model.train()
        for x, y in torch.utils.data.DataLoader(train, batch_size=32, shuffle=True):
            sgd.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sgd.step()
        logged[epoch + 1] = authors_validate(model, str(base / "data"))
        torch.save({"state_dict": model.state_dict(), "best_prec1": 0}, folder / "model.th")
        torch.save(model.state_dict(), folder / f"{epoch + 1}.pt")
    yield folder, logged, base / "data"
    monkeypatch.undo()


@pytest.mark.parametrize("script", ["train_psgd.py", "train_pbfgs.py"])
def test_a_sample_of_the_authors_evaluates_to_their_logged_accuracy(authors_folder, script, capsys):
    folder, logged, data = authors_folder
    for epoch in (1, 3):  # on the archive their run read; a random basis needs one sample only
        assert run_here(script, "--datasets", "CIFAR10", "--data-root", data, "--arch", "resnet8",
                        "--device", "cpu", "--params_start", epoch, "--params_end", epoch + 1,
                        "--n_components", 1, "--basis", "random", "--save-dir", folder, "-e") == 0
        prec = [x for x in capsys.readouterr().out.splitlines() if x.startswith(" * Prec@1")]
        assert len(prec) == 1 and prec[0].split()[2] == logged[epoch], (epoch, prec, logged)


def test_the_authors_folder_runs_through_both_subspace_scripts_with_label_noise(authors_folder,
                                                                                capsys):
    folder, _, data = authors_folder
    for script in ("train_pbfgs.py", "train_psgd.py"):
        assert run_here(script, "--datasets", "CIFAR10", "--data-root", data, "--arch", "resnet8",
                        "--device", "cpu", "--params_end", 4, "--n_components", 2, "--epochs", 1,
                        "--batch-size", 50, "--corrupt", 0.2, "--save-dir", folder) == 0
        notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("=> --corrupt")]
        assert len(notes) == 1 and "cannot be checked" in notes[0] and "all classes" in notes[0]
    for name in ("PBFGS.pt", "PSGD.pt"):
        assert set(torch.load(folder / name, weights_only=True)) == set(
            models.build("resnet8", 10).state_dict())
    resumed = models.build("resnet8", 10)
    utils.load_weights(str(folder / "checkpoint_refine_0.th"), resumed)  # their checkpoint format
    assert torch.equal(torch.nn.utils.parameters_to_vector(resumed.parameters()),
                       utils.load_sample_matrix(str(folder), resumed, [0], "resnet8")[0])


def test_twa_and_swa_run_on_the_authors_folder(authors_folder):
    """The mean of their DataParallel samples ('module.' keys), the span basis, TWA and SWA."""
    folder, _, data = authors_folder
    common = ["--datasets", "CIFAR10", "--data-root", data, "--arch", "resnet8", "--device", "cpu",
              "--params_end", 4, "--batch-size", 50, "--save-dir", folder]
    assert run_here("train_twa.py", *common, "--epochs", 1, "--lr", 0.1) == 0
    assert run_here("swa.py", *common) == 0
    swa = json.load(open(folder / "results_swa.json"))
    twa = json.load(open(folder / "results_twa.json"))
    assert twa["start"]["test_acc_bn"] == swa["final"]["test_acc_bn"]  # TWA starts at SWA
    rows = utils.load_sample_matrix(str(folder), models.build("resnet8", 10), range(4), "resnet8")
    mean = sum(row.double() for row in rows) / 4  # in float64, sample after sample
    saved = torch.load(folder / "SWA.pt", weights_only=True)
    weights = torch.cat([saved[n].reshape(-1).double() for n, _ in
                         models.build("resnet8", 10).named_parameters()])
    assert torch.equal(weights.float(), mean.float())


def test_sgd_resumes_the_authors_checkpoint_only_where_its_sample_vouches_for_it(
        authors_folder, tmp_path, capsys):
    """Their checkpoint records no run; it is this folder's when its weights are the sample of
    its epoch (their train_sgd.py saved both). Elsewhere, or with other weights: one line, exit 2."""
    import shutil
    folder, _, data = authors_folder
    common = ["--datasets", "CIFAR10", "--data-root", data, "--arch", "resnet8", "--device", "cpu",
              "--epochs", 4, "--batch-size", 50]
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "checkpoint_refine_0.th", lone)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    ckpt = torch.load(other / "checkpoint_refine_0.th", weights_only=True)
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = ckpt["state_dict"][first] + 1
    torch.save(ckpt, other / "checkpoint_refine_0.th")
    for where, said in ((lone, "cannot be verified as this run's"), (other, "another run's")):
        before = sorted(p.name for p in where.iterdir())
        assert run_here("train_sgd.py", *common, "--save-dir", where, "--resume",
                        where / "checkpoint_refine_0.th") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0] and "--resume-weights" in err[0], err
        assert sorted(p.name for p in where.iterdir()) == before
    own = tmp_path / "own"
    shutil.copytree(folder, own)
    assert utils.load_resume(str(own / "checkpoint_refine_0.th"), str(own), "checkpoint.pt",
                             authors=True)[0] == str(own / "checkpoint_refine_0.th")
