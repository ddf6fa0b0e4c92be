"""What makes the CvT backbone fast, apart from the model that the paper
describes (:mod:`mmcvt.models.backbones.cvt`): hand-fused ops, autocast
casting in fewer ops, the recompute policy of ``with_cp``, and token and map
layouts that cost no copies in eager mode and compile."""
from .autocast_weights import to_autocast_dtype, with_autocast_weights
from .fused_ops import QuickGELU, add_residual, drop_path_scales, linear_pair
from .recompute import WITH_CP_MODES, run_with_recompute
from .token_layout import map_to_tokens, tokens_to_map

__all__ = [
    'QuickGELU', 'add_residual', 'drop_path_scales', 'linear_pair',
    'to_autocast_dtype', 'with_autocast_weights', 'WITH_CP_MODES',
    'run_with_recompute', 'map_to_tokens', 'tokens_to_map'
]
