"""What the tools need besides the model: the Runner they build, its
hooks, the optimizer constructor of the configs, the work dir lock of a
training, and their common setup.

``import mmcvt`` registers the model alone. The tools import this package,
which registers the Runner, the hooks, the CPU model wrapper and
``CvTOptimWrapperConstructor`` in mmengine's root registries; a config
whose hooks, ``runner_type`` or optimizer ``constructor`` name them asks
for it: ``custom_imports=dict(imports=['mmcvt', 'mmcvt.engine'])``.
"""
from .hooks import (NonFiniteLossError, RandomStatesHook, SafeCheckpointHook,
                    StopOnNonFiniteLossHook)
from .optimizers import CvTOptimWrapperConstructor
from .random_states import capture_random_states, restore_random_states
from .runner import (StrictCheckpointRunner, explain_checkpoint_mismatch,
                     load_checkpoint_strictly)
from .runner_setup import (CPUDistributedDataParallel, add_runner_arguments,
                           build_runner, check_data_paths, cpu_distributed,
                           load_config, use_amp)
from .work_dir_lock import WorkDirInUse, hold_work_dir

__all__ = [
    'CvTOptimWrapperConstructor', 'NonFiniteLossError', 'RandomStatesHook',
    'SafeCheckpointHook', 'StopOnNonFiniteLossHook', 'capture_random_states',
    'restore_random_states', 'StrictCheckpointRunner',
    'explain_checkpoint_mismatch', 'load_checkpoint_strictly',
    'CPUDistributedDataParallel', 'add_runner_arguments', 'build_runner',
    'check_data_paths', 'cpu_distributed', 'load_config', 'use_amp',
    'WorkDirInUse', 'hold_work_dir'
]
