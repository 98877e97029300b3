"""Which CPU kernels made a run's numbers, and the setting that makes them the same on any x86-64
CPU with AVX2 at the same number of threads (docs/speed.md, "The same digits on another CPU").

PyTorch picks its CPU kernels by instruction set when it starts (AVX-512 where the CPU has it,
else AVX2), and MKL, behind its matrix products, by vendor (Intel or AMD). Their rounding differs,
and a short training run amplifies the difference into other digits. The variables of AVX2_PIN,
set before torch is imported, make every x86-64 CPU with AVX2 run the same code:
``DLDR_KERNELS=avx2`` asks run.sh, experiments/digits.sh and the tests for them;
``DLDR_KERNELS=native`` leaves each library its own choice.
"""
import os
import platform

# ATen's own kernels, oneDNN's convolutions, and MKL's one code path for every vendor (its
# "conditional numerical reproducibility"); each read once, at its first use
AVX2_PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
CHOICES = ("avx2", "native")


def pin_environment(choice, environ=None):
    """Set (``avx2``) or leave (``native``) the pin's variables in ``environ`` (os.environ by
    default), which must happen before torch is imported; returns ``environ``."""
    environ = os.environ if environ is None else environ
    if choice not in CHOICES:
        raise ValueError(f"DLDR_KERNELS={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "avx2":
        environ.update(AVX2_PIN)
    return environ


def cpu_name():
    """The CPU: its model name, vendor and widest vector instructions (Linux: /proc/cpuinfo,
    whose first processor stands for all), or what the platform says elsewhere."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{fields['model name']} ({fields.get('vendor_id', '?')}, {widest})"


def kernel_set():
    """What the results record of the CPU side of a run: the kernels torch runs (AVX2, AVX512,
    ...), oneDNN's cap, MKL's code path, the threads and the CPU. Pinned records with the same
    threads give the same digits on any x86-64 CPU with AVX2 (measured: docs/speed.md)."""
    import torch
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "mkl_cbwr": os.environ.get("MKL_CBWR"),
            "pinned": all(os.environ.get(k, "").lower() == v.lower() for k, v in AVX2_PIN.items()),
            "threads": torch.get_num_threads(), "cpu": cpu_name()}
