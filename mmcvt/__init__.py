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
except Exception as error:
    # python -m mmcvt.doctor cannot run either: say here what is wrong with
    # the module that failed (missing, or installed and broken) and what
    # fixes it; a failure in mmcvt's own code is raised as it is
    from .doctor import import_failure_message
    message = import_failure_message(error)
    if message is None:
        raise
    raise ImportError(message) from error

register_hf_loader()

__all__ = ['__version__']
