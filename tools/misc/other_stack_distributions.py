"""Prints, as ``name==version`` separated by spaces, the distributions of
this Python environment that another stack of requirements/ pins and that
install one of the modules every stack installs (mmcv, mmengine, mmdet,
mmseg): installing this stack over them would leave files of both, so
tools/install.sh stops on them.

A distribution that only another stack pins but that installs other modules
does not count: upstream pins ftfy and regex, which mmsegmentation 1.2.2
imports without declaring them, and onedl-mmsegmentation installs them as
its own requirements. One whose files are not listed counts, as nothing
says it stays out of those modules.

Runs with the standard library only, in the environment being installed:

    python tools/misc/other_stack_distributions.py STACK REQUIREMENTS...
"""
import re
import sys
from importlib import metadata
from pathlib import Path

OPENMMLAB_MODULES = frozenset({'mmcv', 'mmengine', 'mmdet', 'mmseg'})


def pinned_by_stack(requirement_files):
    """{distribution name: the stacks that pin it}, each file being
    requirements/<stack>/*.txt."""
    stacks = {}
    for file in map(Path, requirement_files):
        for line in file.read_text().splitlines():
            name = re.match(r'\s*([A-Za-z0-9._-]+)', line.split('#')[0])
            if name:
                stacks.setdefault(name[1], set()).add(file.parent.name)
    return stacks


def installs_openmmlab_modules(distribution):
    files = distribution.files
    return files is None or any(file.parts[0] in OPENMMLAB_MODULES
                                for file in files)


def other_stack_distributions(stack, requirement_files):
    found = []
    for name, stacks in sorted(pinned_by_stack(requirement_files).items()):
        if stack in stacks:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if installs_openmmlab_modules(distribution):
            found.append(f'{name}=={distribution.version}')
    return found


if __name__ == '__main__':
    print(' '.join(other_stack_distributions(sys.argv[1], sys.argv[2:])))
