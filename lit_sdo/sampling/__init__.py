"""Sampling with gradient policies: the loop, the policies, denoiser adapters and schedulers.

Imports no Lightning, no tasks and no objectives (see DESIGN.md).
"""

from lit_sdo.sampling.denoisers import (
    DenoiserAdapter,
    LatentUNetDenoiser,
    PixelUNetDenoiser,
    TransformerDenoiser,
)
from lit_sdo.sampling.loop import SampleOutput, sample
from lit_sdo.sampling.noise import noise_for_seeds
from lit_sdo.sampling.policies import POLICY_NAMES, CallMode, GradientPolicy, as_policy, parse_policy
from lit_sdo.sampling.precision import PRECISION_NAMES, Precision, as_precision, supported_precisions
from lit_sdo.sampling.schedulers import SCHEDULERS, build_scheduler, fresh_scheduler, start_step_for

__all__ = [
    "POLICY_NAMES",
    "PRECISION_NAMES",
    "SCHEDULERS",
    "CallMode",
    "DenoiserAdapter",
    "GradientPolicy",
    "LatentUNetDenoiser",
    "PixelUNetDenoiser",
    "Precision",
    "SampleOutput",
    "TransformerDenoiser",
    "as_policy",
    "as_precision",
    "build_scheduler",
    "fresh_scheduler",
    "noise_for_seeds",
    "parse_policy",
    "sample",
    "start_step_for",
    "supported_precisions",
]
