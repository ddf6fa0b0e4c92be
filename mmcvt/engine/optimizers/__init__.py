"""Optimizer wrapper constructors, as in mmdet.engine.optimizers and
mmpretrain.engine.optimizers."""
from .cvt_optim_wrapper_constructor import (CvTOptimWrapperConstructor,
                                            takes_no_weight_decay)

__all__ = ['CvTOptimWrapperConstructor', 'takes_no_weight_decay']
