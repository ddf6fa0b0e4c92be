"""mmcvt: CvT backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing it registers ``CvT`` in both libraries' MODELS, so a config of
either can say ``custom_imports=dict(imports=['mmcvt'])``; registers the
tools' Runner, checkpoint hook and CPU model wrapper (:mod:`mmcvt.engine`);
and adds the ``hf://`` scheme to mmengine's ``CheckpointLoader``. It
replaces none of mmengine's loaders: mmcvt's tools do that themselves
(:func:`mmcvt.fileio.install_checkpoint_loaders`).
"""
import torch

from .version import __version__, torch_version_problem

if torch_version_problem(torch.__version__):
    # one line here, rather than an AttributeError deep in an import below
    raise ImportError(torch_version_problem(torch.__version__))

try:
    from . import engine  # noqa: F401  registers the runner, hooks, wrapper
    from . import models  # noqa: F401  registers the modules
    from .fileio import register_hf_loader
except ModuleNotFoundError as error:
    module = (error.name or __name__).split('.')[0]
    if module == __name__:
        raise
    # python -m mmcvt.doctor cannot run either: say here what to install
    from .doctor import missing_module_message
    raise ImportError(missing_module_message(module)) from error

register_hf_loader()

__all__ = ['__version__']
