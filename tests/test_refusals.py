"""Issue 33's cases of a finished run replaced without --overwrite (the bad command lines of the
same round are rows of docs/bad-input.md, run by test_cli)."""
import os

from conftest import Stopped, run_here, stop_training_at


def test_sgd_refuses_to_replace_a_finished_run_whose_samples_were_deleted(tmp_path, data_args,
                                                                          capsys):
    folder = tmp_path / "run"
    argv = [*data_args, "--epochs", 1, "--batch-size", 16, "--print-freq", 100, "--save-dir",
            folder]
    assert run_here("train_sgd.py", *argv) == 0
    for name in os.listdir(folder):
        if name[:-3].isdigit():
            os.unlink(folder / name)  # the samples, deleted by hand
    kept = {n: (folder / n).read_bytes() for n in os.listdir(folder) if not n.startswith(".")}
    capsys.readouterr()
    assert run_here("train_sgd.py", *argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run" in err[0] and "--overwrite" in err[0]
    assert "--output-tag" not in err[0]  # train_sgd.py has none
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)
            if not n.startswith(".")} == kept
    # --overwrite replaces it, as asked
    assert run_here("train_sgd.py", *argv, "--overwrite") == 0
    assert (folder / "1.pt").exists()


def test_summarize_marks_a_run_without_final_evaluation(tmp_path):
    import json
    import summarize
    rows = [{"epoch": 0, "test_acc": 10.0}, {"epoch": 1, "test_acc": 50.0, "train_loss": 1.0}]
    (tmp_path / "results_psgd.json").write_text(json.dumps({"epochs": rows}))
    (tmp_path / "results_pbfgs.json").write_text(json.dumps(
        {"epochs": rows, "final": {"test_acc": 50.0, "test_acc_bn": 60.0}}))
    table = summarize.table(str(tmp_path)).splitlines()
    [psgd] = [x for x in table if x.startswith("P-SGD")]
    [pbfgs] = [x for x in table if x.startswith("P-BFGS")]
    assert psgd.endswith("  UNFINISHED") and not pbfgs.endswith("UNFINISHED")
    assert table[-1] == ("UNFINISHED: results_psgd.json: no final evaluation (stopped, or still "
                         "running)")


def test_a_failed_resume_of_a_finished_run_keeps_its_results(tmp_path, data_args, monkeypatch):
    import pytest
    folder = tmp_path / "run"
    sgd = [*data_args, "--epochs", 2, "--batch-size", 16, "--print-freq", 100, "--save-dir",
           folder]
    psgd = [*sgd, "--params_end", 3, "--n_components", 2, "--lr", 0.1]
    assert run_here("train_sgd.py", *sgd) == 0
    assert run_here("train_psgd.py", *psgd) == 0
    finished = {n: (folder / n).read_bytes() for n in ("results_sgd.json", "results_psgd.json")}

    stop_training_at(monkeypatch, epoch=2, step=0)  # the extension's first step fails
    for script, argv in (("train_sgd.py", sgd), ("train_psgd.py", psgd)):
        with pytest.raises(Stopped):  # extended by one epoch, which fails at its first step
            run_here(script, *argv, "--epochs", 3, "--resume")
    assert {n: (folder / n).read_bytes() for n in finished} == finished


def test_the_resume_command_drops_the_start_flags_however_abbreviated():
    """argparse takes unique prefixes (--overwri): the printed resume command must not keep one
    beside the --resume it adds (which then contradicts it)."""
    from dldr.entry import resume_command
    cases = {("--overwri", "--save-dir", "x"): "--save-dir x --resume",
             ("--reu", "--lr", "1"): "--lr 1 --resume",
             ("--resume-w", "a.pt", "--epochs", "3"): "--epochs 3 --resume",
             ("--resume_w=a.pt", "--lr", "2"): "--lr 2 --resume",
             ("--resume", "c.pt", "--ov"): "--resume",
             ("--resume", "--epochs", "2"): "--epochs 2 --resume",
             ("--randomseed", "3", "--output-tag", "re"): "--randomseed 3 --output-tag re --resume"}
    for argv, tail in cases.items():
        command = resume_command(list(argv)).split(" ", 2)  # python, the script, its flags
        assert command[0] == "python" and command[2] == tail, (argv, command)


def test_a_damaged_record_beside_the_samples_is_one_line_not_a_traceback(tmp_path, data_args,
                                                                           capsys):
    """run.json and the noise record say what the subspace runs must match: cut short, they are
    named in one line (a JSONDecodeError traceback before), and nothing is written."""
    folder = tmp_path / "run"
    assert run_here("train_sgd.py", *data_args, "--epochs", 2, "--batch-size", 16, "--print-freq",
                    100, "--corrupt", 0.2, "--save-dir", folder) == 0
    argv = [*data_args, "--corrupt", 0.2, "--params_end", 3, "--n_components", 2, "--epochs", 1,
            "--batch-size", 16, "--save-dir", folder]
    for name in ("run.json", "noisy_labels.json"):
        whole = (folder / name).read_bytes()
        (folder / name).write_bytes(whole[:len(whole) // 2])
        kept = sorted(os.listdir(folder))
        capsys.readouterr()
        assert run_here("train_psgd.py", *argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {folder / name}: damaged (")
        assert "train_sgd.py --overwrite" in err[0] and sorted(os.listdir(folder)) == kept
        (folder / name).write_bytes(whole)
    assert run_here("train_psgd.py", *argv) == 0  # restored: the run goes
