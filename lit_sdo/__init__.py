"""lit_sdo: gradient-based control of diffusion samplers with single-step diffusion optimization (SDO).

The heart is :func:`lit_sdo.sampling.sample`, which runs any diffusers scheduler and decides, through
a :class:`lit_sdo.sampling.GradientPolicy`, which denoiser calls keep an autograd graph.
"""

__version__ = "0.1.0"
