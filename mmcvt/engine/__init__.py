from .checkpoint_loader import load_from_local_file
from .runner_setup import (add_runner_arguments, build_runner,
                           check_data_paths, cpu_distributed, load_config,
                           use_amp)

__all__ = [
    'load_from_local_file', 'add_runner_arguments', 'build_runner',
    'check_data_paths', 'cpu_distributed', 'load_config', 'use_amp'
]
