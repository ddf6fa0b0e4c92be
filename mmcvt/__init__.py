"""mmcvt: CvT backbones for MMDetection 3.x and MMSegmentation 1.x.

Importing it registers the model and no other component: ``CvT``,
``QuickGELU`` and the ``ExtraLevels`` neck, in mmengine's root MODELS, which
both libraries' registries reach, so that a config of either builds its
model with ``custom_imports=dict(imports=['mmcvt'])``. mmcvt's Runner, hooks
and weights-only checkpoint loaders are registered by mmcvt's tools, or by a
config that asks for them with ``imports=['mmcvt', 'mmcvt.engine']``
(:mod:`mmcvt.engine`); other tools keep their own Runner and loaders.

On the OneDL stack, where MMSegmentation's distribution is named
``onedl-mmsegmentation``, it also lets configs that inherit ``mmseg::``
resolve, as they do upstream (:func:`mmcvt.compat.resolve_onedl_config_scopes`;
it changes nothing on the upstream stack).
"""
import torch

from .version import __version__, torch_version_problem

if torch_version_problem(torch.__version__):
    # one line here, rather than an AttributeError deep in an import below
    raise ImportError(torch_version_problem(torch.__version__))

try:
    from . import models  # noqa: F401  registers the modules
    from .compat import resolve_onedl_config_scopes
except Exception as error:
    # python -m mmcvt.doctor cannot run either: say here what is wrong with
    # the module that failed (missing, or installed and broken) and what
    # fixes it; a failure in mmcvt's own code is raised as it is
    from .doctor import import_failure_message
    message = import_failure_message(error)
    if message is None:
        raise
    raise ImportError(message) from error

resolve_onedl_config_scopes()

__all__ = ['__version__']
