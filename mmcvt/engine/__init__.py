"""What the tools need besides the model: the Runner they build, its
hooks, the work dir lock of a training, and their common setup."""
from .hooks import (NonFiniteLossError, RandomStatesHook, SafeCheckpointHook,
                    StopOnNonFiniteLossHook)
from .random_states import capture_random_states, restore_random_states
from .runner import StrictCheckpointRunner, explain_checkpoint_mismatch
from .runner_setup import (CPUDistributedDataParallel, add_runner_arguments,
                           build_runner, check_data_paths, cpu_distributed,
                           load_config, use_amp)
from .work_dir_lock import WorkDirInUse, hold_work_dir

__all__ = [
    'NonFiniteLossError', 'RandomStatesHook', 'SafeCheckpointHook',
    'StopOnNonFiniteLossHook', 'capture_random_states',
    'restore_random_states', 'StrictCheckpointRunner',
    'explain_checkpoint_mismatch', 'CPUDistributedDataParallel',
    'add_runner_arguments', 'build_runner', 'check_data_paths',
    'cpu_distributed', 'load_config', 'use_amp', 'WorkDirInUse',
    'hold_work_dir'
]
