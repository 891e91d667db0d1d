"""The one place that turns a name into a ready model with its conventions (DESIGN.md: models/).

``embedded:<name>`` are lit_sdo's shipped models under ``data/models/``; hub ids are only read from the
local cache (nothing is downloaded); a missing model is a one-line ``FileNotFoundError``.
"""

from lit_sdo.models.classifiers import Classifier, load_classifier
from lit_sdo.models.clip import ClipModel, load_clip
from lit_sdo.models.diffusion import build_sampler, load_diffusion
from lit_sdo.models.diffusion_model import DiffusionModel
from lit_sdo.models.hub import EMBEDDED_ROOT, embedded_names

__all__ = [
    "EMBEDDED_ROOT",
    "Classifier",
    "ClipModel",
    "DiffusionModel",
    "build_sampler",
    "embedded_names",
    "load_classifier",
    "load_clip",
    "load_diffusion",
]
