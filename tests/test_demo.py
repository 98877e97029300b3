"""./run.sh demo reruns like make (end to end, in .ci/run after the suite): a second run keeps every
finished step, Ctrl-C in the middle then a rerun finishes without redoing a finished step and
without a stale_* folder, and ends with the digits of the run never stopped."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT, THREADS

STEPS = ("results_sgd.json", "results_psgd.json", "results_pbfgs.json", "results_psgd_random.json")


def demo(folder, *args, **popen):
    # resnet8: the demo's recipe at a third of its time; the kernels the demo pins by default
    env = {k: v for k, v in os.environ.items() if k not in ("DLDR_KERNELS", "OMP_NUM_THREADS")}
    env.update(DEMO_DIR=str(folder), ARCH="resnet8", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=THREADS)
    return subprocess.Popen(["bash", os.path.join(ROOT, "run.sh"), "demo", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(proc):
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out


def kept_files(folder):
    """The steps' files (samples, checkpoints, results, models) with their bytes and times; the
    plots are drawn anew each time."""
    return {name: ((folder / name).read_bytes(), os.stat(folder / name).st_mtime_ns)
            for name in sorted(os.listdir(folder)) if not name.endswith(".png")
            and not name.startswith(".")}


def without_times(results):
    drop = ("time", "train_time", "images_per_s", "peak_memory_bytes")
    run = {k: v for k, v in results.items() if k not in drop}
    run["args"] = {k: v for k, v in run["args"].items() if k != "save_dir"}
    run["epochs"] = [{k: v for k, v in e.items() if k not in drop} for e in run["epochs"]]
    return run


@pytest.mark.end_to_end
def test_the_demo_reruns_like_make_and_resumes_after_ctrl_c(tmp_path):
    first = tmp_path / "first"
    out = finish(demo(first))
    assert "demo finished" in out and "(kernels: avx2, threads: " in out
    files = kept_files(first)
    start = time.time()
    out = finish(demo(first))  # again: every step kept, nothing rewritten
    assert out.count("=> --reuse: ") == 4 and out.count("kept as it is") == 4, out
    assert "Epoch: [" not in out and kept_files(first) == files
    again_s = time.time() - start

    # Ctrl-C (SIGINT to the whole process group, as a terminal sends it) in P-BFGS's second epoch
    second = tmp_path / "second"
    second.mkdir()
    (second / "stale_marker").write_text("a folder --fresh deletes")
    proc = demo(second, "--fresh", start_new_session=True)
    seen, in_pbfgs = [], False
    for line in proc.stdout:
        seen.append(line)
        in_pbfgs = in_pbfgs or line.startswith("grad accumulate: ")  # P-BFGS's first line
        if in_pbfgs and line.startswith("Epoch: [1]["):
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "stopped by SIGINT" in rest, "".join(seen) + rest
    assert not (second / "stale_marker").exists()  # --fresh started over
    out = finish(demo(second))
    assert out.count("kept as it is") == 2  # SGD and P-SGD, finished before the stop
    assert "=> --reuse: continuing the unfinished run" in out and "(epoch 1 of 4)" in out
    assert not [n for n in os.listdir(second) if n.startswith("stale_")]
    # The same digits as the run never stopped
    for name in STEPS:
        a = json.loads((first / name).read_text())
        b = json.loads((second / name).read_text())
        assert without_times(a) == without_times(b), name
    print(f"second run of the demo, every step kept: {again_s:.1f} s")
