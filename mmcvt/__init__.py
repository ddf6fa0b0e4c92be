"""mmcvt: CvT backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing it registers ``CvT`` in both libraries' MODELS, so a config of
either can say ``custom_imports=dict(imports=['mmcvt'])``; registers the
tools' Runner, checkpoint hook and CPU model wrapper (:mod:`mmcvt.engine`);
and installs its checkpoint loaders in mmengine (see
:mod:`mmcvt.fileio.checkpoint_loader`), so that a Runner's ``load_from`` and
``--resume`` read through them too.
"""
from . import engine  # noqa: F401  registers the runner, hook and wrapper
from . import models  # noqa: F401  registers the modules
from .fileio import register_checkpoint_loaders
from .version import __version__

register_checkpoint_loaders()

__all__ = ['__version__']
