"""The training loop's tools: seeding, devices, determinism, precision, torch.compile, memory."""
import os

import torch

from .cli import UsageError
from .distributed import world


def seed_everything(seed):
    """Seed torch's generators: initialisation, dropout and the data order all draw from them
    (the label noise has its own generator, see data.noisy_labels)."""
    torch.manual_seed(seed)


def resolve_device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a torch device (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device"
                             f"{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1}); use one "
                             "of them (CUDA_VISIBLE_DEVICES renumbers them from 0)")
        # so that kernels, generators and "cuda" tensors of libraries land on it, not on cuda:0
        torch.cuda.set_device(device)
    if device.type == "meta":
        raise UsageError(f"--device {name}: meta tensors hold no values, nothing can be trained "
                         "or evaluated on them; use --device cpu or cuda")
    if device.type not in ("cpu", "cuda"):  # mps, xpu, ...: usable only where torch has them
        try:
            (torch.ones(2, device=device) * 2).sum().item()
        except Exception as e:  # torch's error differs by backend: not compiled, no device, ...
            why = " ".join(str(e).split()).split(". ")[0]
            raise UsageError(f"--device {name}: torch cannot use it here ({why}); use --device "
                             "cpu or cuda") from None
    return device


def make_deterministic(enabled):
    """--deterministic: the same run twice, or stopped and resumed, gives the same numbers on a
    GPU too: cuDNN's deterministic algorithms without autotuning, torch's deterministic
    implementations (an operation without one raises instead of varying), cuBLAS with a fixed
    workspace. Slower on a GPU; on the CPU runs repeat without it."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device):
    """The most device memory this process's tensors held since ``reset_peak_memory`` (CUDA);
    None on the CPU, where torch does not count it."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def amp_mode(amp, half, dtype):
    """The autocast precision of --amp / --half: "bf16", "fp16" or None."""
    amp = amp or ("fp16" if half else None)
    if amp and dtype == "float64":
        raise UsageError(f"--dtype float64 and --amp {amp} (or --half) contradict each other; "
                         "choose one")
    return amp


def autocast(device, amp):
    """bf16/fp16 autocast on the device when asked, else a no-op context."""
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def full_precision(output):
    """Logits for the loss: low-precision (autocast) outputs in float32, others as they are."""
    return output.float() if output.dtype in (torch.float16, torch.bfloat16) else output


def compile_model(model, device, enabled, mode=None, backend="inductor"):
    """``--compile``: the module that runs forward passes; ``model`` keeps the parameters and state."""
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if not enabled:
        return model
    if backend != "inductor":
        return torch.compile(model, backend=backend)  # modes are inductor options
    # CUDA graphs for the fixed-shape steps; not under torchrun, where DDP's gradient all-reduce
    # hooks run inside the backward pass (untested with graph capture, so left out by default).
    graphs = device.type == "cuda" and world()[1] == 1
    return torch.compile(model, mode=mode or ("reduce-overhead" if graphs else None))


def step_marker(device, compiled):
    """A function to call before each training forward: with CUDA graphs it tells torch that a new
    iteration begins (so outputs of the last one may be reused); a no-op otherwise."""
    if compiled and device.type == "cuda":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None
