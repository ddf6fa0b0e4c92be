"""What the tools need besides the model: the Runner they build, its
checkpoint hook, and their common setup."""
from .hooks import SafeCheckpointHook
from .runner import StrictCheckpointRunner, explain_checkpoint_mismatch
from .runner_setup import (CPUDistributedDataParallel, add_runner_arguments,
                           build_runner, check_data_paths, cpu_distributed,
                           load_config, use_amp)

__all__ = [
    'SafeCheckpointHook', 'StrictCheckpointRunner',
    'explain_checkpoint_mismatch', 'CPUDistributedDataParallel',
    'add_runner_arguments', 'build_runner', 'check_data_paths',
    'cpu_distributed', 'load_config', 'use_amp'
]
