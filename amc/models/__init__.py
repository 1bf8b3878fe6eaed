"""Models: the CIFAR zoo, model references (zoo, torchvision, timm, the user's factory), checkpoints.

``resolve_model(ref, num_classes=None, weights=None, input_size=None)`` is the one place a
reference becomes a module; ``ModelRef`` is its stored form. Weights are read without pickle.
"""

from amc.models.checkpoints import (
    file_sha256,
    load_checkpoint,
    load_state_dict_checked,
    read_state_dict,
)
from amc.models.refs import (
    KNOWN_FORMS,
    ModelRef,
    build_model,
    guess_model_name,
    load_model,
    resolve_arch,
    resolve_model,
)
from amc.models.zoo import MODELS, VGG, VGG8_CFG, BasicBlock, CifarResNet

__all__ = [
    "KNOWN_FORMS",
    "MODELS",
    "VGG",
    "VGG8_CFG",
    "BasicBlock",
    "CifarResNet",
    "ModelRef",
    "build_model",
    "file_sha256",
    "guess_model_name",
    "load_checkpoint",
    "load_model",
    "load_state_dict_checked",
    "read_state_dict",
    "resolve_arch",
    "resolve_model",
]
