"""LightningModules: what is trained or optimised (one module per kind of trainable thing).

Modules are imported by their full path from YAML (``class_path: lit_sdo.tasks.train_diffusion...``),
so this package imports nothing eagerly.
"""
