"""What makes the CvT backbone fast, apart from the model that the paper
describes (:mod:`mmcvt.models.backbones.cvt`): hand-fused ops, autocast
casting in fewer ops, the recompute policy of ``with_cp``, and token and map
layouts that cost no copies in eager mode and compile; and attention in
chunks of queries for exported graphs."""
from .autocast_weights import to_autocast_dtype, with_autocast_weights
from .chunked_attention import chunked_attention
from .fused_ops import QuickGELU, add_residual, drop_path_scales, linear_pair
from .recompute import WITH_CP_MODES, run_with_recompute
from .token_layout import map_to_tokens, tokens_to_map

__all__ = [
    'QuickGELU', 'add_residual', 'drop_path_scales', 'linear_pair',
    'to_autocast_dtype', 'with_autocast_weights', 'WITH_CP_MODES',
    'run_with_recompute', 'map_to_tokens', 'tokens_to_map', 'chunked_attention'
]
