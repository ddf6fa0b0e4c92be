import re

__version__ = '0.1.0'

# The oldest torch that mmcvt runs on. What sets it: reading mmengine
# Runner checkpoints weights-only takes stand-ins registered under another
# name, torch.serialization.safe_globals([(function, 'module.name')]),
# which torch 2.6 added; get_unsafe_globals_in_checkpoint and
# get_safe_globals (2.5), selective activation checkpointing with
# CheckpointPolicy (2.4), torch.get_autocast_dtype (2.4) and the
# TorchDispatchMode of torch.utils._python_dispatch that mmcvt.analysis
# counts FLOPs with (2.0 has it) are older.
TORCH_MINIMUM = '2.6'


def torch_version_problem(torch_version):
    """Why mmcvt cannot run on this torch version, or None. (Read by
    setup.py and tools/install.sh without importing mmcvt.)"""

    def major_minor(version):
        return tuple(int(part) for part in re.findall(r'\d+', version)[:2])

    if major_minor(torch_version) >= major_minor(TORCH_MINIMUM):
        return None
    return (f'mmcvt needs torch >= {TORCH_MINIMUM}, and this environment '
            f'has torch {torch_version}: install a newer one, e.g. pip '
            f'install "torch>={TORCH_MINIMUM}"')
