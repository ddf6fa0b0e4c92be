"""mmcvt: CvT backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing it registers ``CvT`` in both libraries' MODELS, so a config of
either can say ``custom_imports=dict(imports=['mmcvt'])``, and installs its
checkpoint loaders in mmengine (see :mod:`mmcvt.engine.checkpoint_loader`).
"""
from . import models  # noqa: F401  registers the modules
from .engine.checkpoint_loader import register_checkpoint_loaders
from .version import __version__

register_checkpoint_loaders()

__all__ = ['__version__']
