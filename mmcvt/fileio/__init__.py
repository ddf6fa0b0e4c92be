"""Reading checkpoint files, without running code from them."""
from .checkpoint_loader import (checkpoint_file_problem,
                                install_checkpoint_loaders, kind_mismatches,
                                load_checkpoint_file, load_from_local_file,
                                name_keys, register_hf_loader)
from .unpickling import TRUST_VARIABLE, load_weights_only

__all__ = [
    'TRUST_VARIABLE', 'checkpoint_file_problem', 'install_checkpoint_loaders',
    'kind_mismatches', 'load_checkpoint_file', 'load_from_local_file',
    'load_weights_only', 'name_keys', 'register_hf_loader'
]
