"""bench/gpu_check.py's machinery without its heavy stages: the stage list and budgets, one JSON
line per stage written as each ends, a stage past its budget or crashing recorded "failed" with
its reason while the next one runs, GPU-only stages skipped with --cpu, --verify, and the
compile counters a stage reads. (.ci/run runs the whole --cpu dry run.)"""
import json
import os
import sys
import time

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import gpu_check  # noqa: E402

NAMES = ["identity", "sgd_epoch", "pbfgs_step", "psgd_step", "basis", "agreement", "resume",
         "torchrun", "peak_memory", "pipeline"]


def test_the_stages_and_their_budgets():
    assert [s.name for s in gpu_check.STAGES] == NAMES
    assert sum(s.budget(cpu=False) for s in gpu_check.STAGES) <= 450  # under 8 min on one GPU
    gpu_check.check_budgets()
    skipped = {s.name for s in gpu_check.STAGES if s.gpu_only}
    assert skipped == {"agreement", "peak_memory"}
    bad = gpu_check.Stage("x", 500, 1, None, None)
    with pytest.raises(AssertionError, match="over 450"):
        gpu_check.STAGES.append(bad)
        try:
            gpu_check.check_budgets()
        finally:
            gpu_check.STAGES.remove(bad)


def _python(code, *args):
    return [sys.executable, "-c", code, *args]


def test_each_stage_one_line_as_it_ends_a_late_or_crashing_one_failed_and_the_next_runs(
        tmp_path, monkeypatch, capsys):
    jsonl = tmp_path / "gpu_check.jsonl"
    write = ("import json, sys; json.dump({'figures': {'lines_before': len(open(sys.argv[2])"
             ".readlines()), 'x': 1.5}, 'skipped_parts': {'gpu': 'none here'}}, "
             "open(sys.argv[1], 'w'))")
    late = ("import json, sys, time; json.dump({'figures': {'done': 'half'}, 'skipped_parts': {}},"
            " open(sys.argv[1], 'w')); print('still working', file=sys.stderr, flush=True); "
            "time.sleep(60)")
    crash = "import sys; print('boom: the reason', file=sys.stderr); sys.exit(3)"
    commands = {"first": lambda f: _python(write, f, str(jsonl)),
                "late": lambda f: _python(late, f),
                "crash": lambda f: _python(crash),
                "after": lambda f: _python(write, f, str(jsonl))}
    stages = [gpu_check.Stage(name, 1, 2, None, None) for name in commands]
    stages.insert(2, gpu_check.Stage("gpu_only", 1, 1, None, "--cpu: needs a GPU"))
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    monkeypatch.setattr(gpu_check, "child_command",
                        lambda stage, cpu, figures, work: commands[stage.name](figures))
    start = time.monotonic()
    assert gpu_check.main(["--cpu", "--out", str(tmp_path)]) == 1  # a stage failed
    assert time.monotonic() - start < 20  # the late stage was stopped at its budget, not 60 s
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(ln["stage"], ln["status"]) for ln in lines] == [
        ("first", "ok"), ("late", "failed"), ("gpu_only", "skipped"), ("crash", "failed"),
        ("after", "ok")]
    first, late_, gpu_only, crashed, after = lines
    assert first["lines_before"] == 0 and after["lines_before"] == 4  # written as each ended
    assert first["x"] == 1.5 and first["skipped_parts"] == {"gpu": "none here"}
    assert first["mode"] == "cpu" and first["budget_s"] == 2 and first["seconds"] > 0
    assert "ran past its budget of 2 s" in late_["reason"] and "still working" in late_["reason"]
    assert late_["done"] == "half" and late_["seconds"] < 10  # its figures until then are kept
    assert gpu_only["reason"] == "--cpu: needs a GPU" and gpu_only["seconds"] == 0
    assert "exit status 3" in crashed["reason"] and "boom: the reason" in crashed["reason"]
    out = capsys.readouterr().out
    assert "[2/5] late: failed" in out and "| after | ok |" in out
    assert (tmp_path / "gpu_check.md").read_text().startswith("| stage | status |")


def test_verify_wants_one_line_per_stage_and_none_failed(tmp_path, capsys):
    path = tmp_path / "gpu_check.jsonl"
    lines = [{"stage": n, "status": "skipped" if n == "agreement" else "ok"} for n in NAMES]
    path.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    assert gpu_check.main(["--verify", str(path)]) == 0
    lines[3]["status"], lines[3]["reason"] = "failed", "exit status 1: x"
    path.write_text("".join(json.dumps(ln) + "\n" for ln in lines[:-1]))
    assert gpu_check.main(["--verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "psgd_step: failed (exit status 1: x)" in err and "expected one line each" in err


def test_compile_watch_counts_graphs_and_recompilations():
    f = torch.compile(lambda x: x.sin() + 1, backend="eager", dynamic=False)
    with gpu_check.CompileWatch() as watch:
        for n in (3, 4):
            f(torch.ones(n))
    figures = watch.figures(gpu=False)
    assert figures["graphs_compiled"] == 2 and figures["recompiles"] == 1
    assert "size mismatch" in figures["recompile_reasons"][0]


@pytest.mark.parametrize("args", [["--budget-scale", "-1"], ["--budget-scale", "0"],
                                  ["--out", "{tmp}/plain/out"]])
def test_bad_arguments_are_refused_before_any_stage(tmp_path, capsys, args):
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(["--cpu", *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr()
    assert stop.value.code == 2 and err.out == "" and "Traceback" not in err.err
    assert args[0] in err.err.splitlines()[-1]
    assert not (tmp_path / "plain" / "out").exists()


def test_a_relative_out_is_the_callers_folder_whatever_the_stages_cwd(tmp_path, monkeypatch):
    """Issue 33: a relative --out given from another folder was read by the stages (run in the
    repository's root) as another folder, and a passing stage failed for want of its figures."""
    write = ("import json, sys; json.dump({'figures': {'x': 1.5}, 'skipped_parts': {}}, "
             "open(sys.argv[1], 'w'))")
    monkeypatch.setattr(gpu_check, "STAGES", [gpu_check.Stage("first", 1, 2, None, None)])
    monkeypatch.setattr(gpu_check, "child_command",
                        lambda stage, cpu, figures, work: _python(write, figures))
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["--cpu", "--out", "rel"]) == 0
    [line] = [json.loads(x) for x in (tmp_path / "rel" / "gpu_check.jsonl").read_text().splitlines()]
    assert line["status"] == "ok" and line["x"] == 1.5
    assert (tmp_path / "rel" / "gpu_check.md").exists()
