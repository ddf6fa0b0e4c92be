"""What makes the CvT backbone fast, apart from the model that the paper
describes (:mod:`mmcvt.models.backbones.cvt`): hand-fused ops, autocast
casting in fewer ops, and the recompute policy of ``with_cp``."""
from .autocast_weights import to_autocast_dtype, with_autocast_weights
from .fused_ops import QuickGELU, add_residual, drop_path_scales
from .recompute import WITH_CP_MODES, run_with_recompute

__all__ = [
    'QuickGELU', 'add_residual', 'drop_path_scales', 'to_autocast_dtype',
    'with_autocast_weights', 'WITH_CP_MODES', 'run_with_recompute'
]
