"""Small timm networks for the embedded classifiers, built from a JSON-able config.

Two families so that transfer between architectures can be measured: a ResNet (the attack's
target) and a ConvNeXt. Both are timm classes with their ImageNet stems replaced, because a 7×7
stride-2 stem + max-pool (ResNet) or a 4×4 patchify stem (ConvNeXt) would shrink a 16×16 digit to
4×4 before the first block.
"""

from __future__ import annotations

from typing import Any

from timm.layers import get_norm_layer
from timm.models.convnext import ConvNeXt
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

ARCHITECTURES = ("resnet", "convnext")


def build_resnet(in_chans: int = 1, num_classes: int = 10, layers: tuple[int, ...] = (1, 1, 1, 1),
                 channels: tuple[int, ...] = (16, 32, 64, 128), drop_rate: float = 0.0) -> ResNet:
    """timm ResNet (BasicBlocks) with a 3×3 stride-1 stem and no max-pool: 16×16 -> 16, 8, 4, 2."""
    net = ResNet(block=BasicBlock, layers=tuple(layers), channels=tuple(channels), num_classes=num_classes,
                 in_chans=in_chans, drop_rate=drop_rate)
    # timm's plain stem is always 64 wide (bn1 has 64 channels): keep the width, change kernel and stride.
    net.conv1 = nn.Conv2d(in_chans, net.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def build_convnext(in_chans: int = 1, num_classes: int = 10, depths: tuple[int, ...] = (1, 1, 2, 1),
                   dims: tuple[int, ...] = (16, 32, 64, 128), patch_size: int = 1, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0, norm_layer: str | None = None) -> ConvNeXt:
    """timm ConvNeXt (4 stages, as timm requires) with a 1×1 stem: 16×16 -> 16, 8, 4, 2 (timm downsamples
    in stage 0 too when the stem strides, which would leave 1×1 < the 2×2 downsampling kernel);
    5×5 depthwise kernels (7×7 outgrows the late maps). ``drop_rate`` (before the head) and ``drop_path_rate``
    (stochastic depth) regularise a network that would otherwise memorise the training crops.
    ``norm_layer`` None keeps ConvNeXt's LayerNorm; a timm norm name (``"batchnorm2d"``, the normalisation the
    ConvNeXt paper's modernisation starts from) switches every block to channels-first (``conv_mlp``), as timm
    requires for any other norm."""
    if norm_layer is not None:
        try:
            get_norm_layer(norm_layer)
        except KeyError:
            raise ValueError(f"norm_layer={norm_layer!r} is not a timm norm layer name (e.g. 'batchnorm2d', "
                             "'groupnorm'); leave it unset for ConvNeXt's LayerNorm") from None
    return ConvNeXt(in_chans=in_chans, num_classes=num_classes, depths=tuple(depths), dims=tuple(dims),
                    patch_size=patch_size, kernel_sizes=5, drop_rate=drop_rate,
                    drop_path_rate=drop_path_rate, norm_layer=norm_layer, conv_mlp=norm_layer is not None)


def build_network(architecture: str, **kwargs: Any) -> nn.Module:
    """The network named ``architecture`` (one of ``ARCHITECTURES``) with ``kwargs``."""
    builders = {"resnet": build_resnet, "convnext": build_convnext}
    if architecture not in builders:
        raise ValueError(f"architecture={architecture!r} is unknown; allowed values: {', '.join(ARCHITECTURES)}")
    return builders[architecture](**kwargs)
