"""lit_sdo's ADM against openai/guided-diffusion's own networks, at the released 128×128 flags.

Needs a clone of https://github.com/openai/guided-diffusion (only its ``guided_diffusion/unet.py`` and the
files it imports are used; nothing of it is installed or copied into lit_sdo). For the UNet and for the
classifier, it builds the official network and lit_sdo's on the meta device and compares every parameter
name and shape, then fills the official network with seeded random weights, loads that state dict into
lit_sdo's with ``strict=True`` and prints the largest output difference on random inputs.

    python benchmarks/adm_reference_check.py --guided-diffusion /path/to/guided-diffusion [--size 32]
        [--model-channels 64]   (narrower networks of the same layout: the code path in seconds)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lit_sdo.models.adm import ADMClassifier, ADMUNet, count_parameters
from lit_sdo.models.guided_diffusion import ARCHITECTURES, build_on_meta


def official_kwargs(ours: dict) -> dict:
    """guided-diffusion's argument names for our constructor arguments."""
    renamed = dict(ours)
    renamed["use_scale_shift_norm"] = renamed.pop("scale_shift")
    renamed["use_new_attention_order"] = not renamed.pop("split_heads_first")
    return renamed


def compare(official_cls: type, ours_cls: type, part: str, inputs: tuple, model_channels: int | None) -> None:
    kwargs = ARCHITECTURES["128x128"][part] | ({"model_channels": model_channels} if model_channels else {})
    official_meta = build_on_meta(official_cls, official_kwargs(kwargs))
    ours_meta = build_on_meta(ours_cls, kwargs)
    layout = {k: tuple(v.shape) for k, v in official_meta.state_dict().items()}
    same = layout == {k: tuple(v.shape) for k, v in ours_meta.state_dict().items()}
    print(f"{part}: {len(layout)} tensors, official {count_parameters(official_meta):,} parameters, lit_sdo "
          f"{count_parameters(ours_meta):,}; same names and shapes: {same}")
    start = time.perf_counter()
    torch.manual_seed(0)
    official = official_cls(**official_kwargs(kwargs)).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.02)
    ours = ours_cls(**kwargs).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    with torch.no_grad():
        a, b = official(*inputs), ours(*inputs)
    print(f"{part}: max |official - lit_sdo| = {(a - b).abs().max().item():.3g} (max |output| "
          f"{a.abs().max().item():.3g}), input {tuple(inputs[0].shape)}, {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guided-diffusion", required=True, help="folder of a clone of openai/guided-diffusion")
    parser.add_argument("--size", type=int, default=32, help="UNet input side (the classifier always gets 128)")
    parser.add_argument("--model-channels", type=int, default=None,
                        help="both networks at this base width (a multiple of 64) instead of the released 256 / 128")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.guided_diffusion)
    from guided_diffusion.unet import EncoderUNetModel, UNetModel

    torch.manual_seed(1)
    compare(EncoderUNetModel, ADMClassifier, "classifier", (torch.randn(2, 3, 128, 128), torch.tensor([10, 700])),
            args.model_channels)
    compare(UNetModel, ADMUNet, "unet", (torch.randn(1, 3, args.size, args.size), torch.tensor([500]),
                                         torch.tensor([417])), args.model_channels)


if __name__ == "__main__":
    main()
