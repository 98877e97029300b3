"""Which network --arch names: the CIFAR-style zoo in models/, or torchvision's ImageNet models for
the image-folder datasets (as the authors did); in the parameters' dtype."""
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


def new_model(arch, datasets, num_classes):
    """A fresh ``arch``: torchvision's ImageNet model for ImageNet/folder, else the CIFAR-style one
    of our registry (``resnet18`` differs between the two)."""
    check_arch_name(arch, datasets)
    if datasets in FOLDER_DATASETS:
        import torchvision
        # Without pretrained weights these two default to an auxiliary head (a tuple output).
        extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet",
                                                                        "inception_v3") else {}
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra)
    return models.build(arch, num_classes)


def build_model(arch, datasets, num_classes, device, dtype="float32"):
    """``new_model`` on ``device``; with dtype "float64" its parameters and inputs in double."""
    model = new_model(arch, datasets, num_classes).to(device)
    if dtype == "float64":
        model = model.double()
        model.register_forward_pre_hook(lambda module, inputs: tuple(
            x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs))
    return model
