"""The CPU kernel set: DLDR_KERNELS=avx2 pins torch's kernels before it starts, and every run
records the set that made its numbers (docs/speed.md)."""
import json
import os
import platform

import pytest
import torch

from conftest import ROOT, kernels_in_new_interpreter
from dldr.kernels import AVX2_PIN, kernel_set, pin_environment


def test_pin_environment_sets_both_variables_or_none():
    assert pin_environment("avx2", {}) == AVX2_PIN
    assert pin_environment("native", {"PATH": "x"}) == {"PATH": "x"}
    with pytest.raises(ValueError, match="DLDR_KERNELS='avx512'"):
        pin_environment("avx512", {})


def test_the_pin_reaches_torch_and_the_record_says_so():
    env = {k: v for k, v in os.environ.items() if k not in AVX2_PIN}
    native = kernels_in_new_interpreter(dict(env, OMP_NUM_THREADS="1"))
    pinned = kernels_in_new_interpreter(pin_environment("avx2", dict(env, OMP_NUM_THREADS="1")))
    assert native["pinned"] is False and native["onednn_max_cpu_isa"] is None
    assert pinned["pinned"] is True and pinned["onednn_max_cpu_isa"] == "AVX2"
    assert native["threads"] == pinned["threads"] == 1 and native["cpu"] == pinned["cpu"]
    x86_avx2 = native["cpu_capability"] in ("AVX2", "AVX512")
    if platform.machine() in ("x86_64", "AMD64") and x86_avx2:
        assert pinned["cpu_capability"] == "AVX2"  # AVX-512 CPUs too
    else:  # a CPU without AVX2 (or not x86): the pin cannot raise the kernels above its own
        assert pinned["cpu_capability"] == native["cpu_capability"]


def test_every_run_records_its_kernel_set(digits_samples):
    run = json.loads((digits_samples / "run.json").read_text())
    results = json.loads((digits_samples / "results_sgd.json").read_text())
    here = kernel_set()
    assert run["kernels"] == results["kernels"] == here
    assert here["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert here["threads"] == torch.get_num_threads()
    # the tests pin the kernels unless DLDR_KERNELS=native (conftest)
    assert here["pinned"] == (os.environ.get("DLDR_KERNELS", "avx2") == "avx2")


def test_run_sh_and_digits_sh_set_exactly_the_pin():
    """The shell scripts set DLDR_KERNELS=avx2's variables themselves (before any Python starts):
    the same as AVX2_PIN, and native leaves them unset."""
    import re
    wanted = " ".join(f"{k}={v}" for k, v in AVX2_PIN.items())
    for script in ("run.sh", os.path.join("experiments", "digits.sh")):
        text = open(os.path.join(ROOT, script)).read()
        [exported] = re.findall(r"avx2\) export ([^;]+);", text)
        assert exported.strip() == wanted, script
    native = re.findall(r"native\) unset ([^;]+);", open(os.path.join(
        ROOT, "experiments", "digits.sh")).read())
    assert native[0].split() == list(AVX2_PIN)
