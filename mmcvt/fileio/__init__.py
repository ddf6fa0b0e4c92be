"""Reading checkpoint files: what the model needs, apart from the tools."""
from .checkpoint_loader import (checkpoint_file_problem, load_from_local_file,
                                register_checkpoint_loaders)

__all__ = [
    'checkpoint_file_problem', 'load_from_local_file',
    'register_checkpoint_loaders'
]
