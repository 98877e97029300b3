"""Which network --arch names: the CIFAR-style zoo in models/, or torchvision's ImageNet models for
the image-folder datasets (as the authors did); in the parameters' dtype."""
import contextlib
import io
import os

import torch

import models

from .cli import UsageError
from .data import FOLDER_DATASETS


def torchvision_arch_names():
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)  # classification only


def check_arch_name(arch, datasets=None):
    if datasets in FOLDER_DATASETS:
        if arch not in torchvision_arch_names():
            raise UsageError(f"unknown --arch {arch!r} for --datasets {datasets}, which takes "
                             "torchvision's ImageNet architectures, e.g. resnet18, resnet50, "
                             "vgg16_bn, mobilenet_v2 (all: torchvision.models.list_models())")
    elif arch not in models.names():
        raise UsageError(f"unknown --arch {arch!r}; known: {', '.join(models.names())}")


def _torchvision_model(arch, num_classes, pretrained):
    import torchvision
    # Without pretrained weights these two default to an auxiliary head (a tuple output).
    extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet",
                                                                    "inception_v3") else {}
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    if pretrained:
        state = pretrained_state(arch, num_classes)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own})  # not the aux heads
    return model


def pretrained_state(arch, num_classes):
    """torchvision's ImageNet weights of ``arch`` (--pretrained), fetched once into torch's hub
    cache and read weights-only; a UsageError naming the flag when they cannot be had."""
    import torchvision
    if num_classes != 1000:
        raise UsageError(f"--pretrained: torchvision's weights of {arch} classify 1000 ImageNet "
                         f"classes, the dataset has {num_classes}")
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cache = os.path.join(torch.hub.get_dir(), "checkpoints")
    if not os.path.exists(os.path.join(cache, os.path.basename(weights.url))):
        print(f"=> --pretrained: downloading {weights.url} into {cache}", flush=True)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's own download line
            return torch.hub.load_state_dict_from_url(weights.url, progress=False,
                                                      check_hash=True, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"--pretrained: cannot fetch torchvision's weights of {arch} from "
                         f"{weights.url} ({first}); fetch them once with internet access, into "
                         f"{cache}")


def new_model(arch, datasets, num_classes, pretrained=False):
    """A fresh ``arch``: torchvision's ImageNet model for ImageNet/folder (with ``pretrained``,
    torchvision's weights), else the CIFAR-style one of our registry (``resnet18`` differs between
    the two), for which ``pretrained`` means nothing, as in the authors' scripts."""
    check_arch_name(arch, datasets)
    if datasets in FOLDER_DATASETS:
        return _torchvision_model(arch, num_classes, pretrained)
    return models.build(arch, num_classes)


def build_model(arch, datasets, num_classes, device, dtype="float32", pretrained=False):
    """``new_model`` on ``device``; with dtype "float64" its parameters and inputs in double."""
    model = new_model(arch, datasets, num_classes, pretrained).to(device)
    if dtype == "float64":
        model = model.double()
        model.register_forward_pre_hook(lambda module, inputs: tuple(
            x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs))
    return model
