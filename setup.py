import os
import shutil
from pathlib import Path
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Where OpenMMLab packages keep the files they ship besides their modules
# (mmdet/.mim/configs, mmdet/.mim/tools), relative to the package; mim
# (`mim train mmcvt CONFIG`, `mim test`) runs the tools from there.
MIM = Path('.mim')
MIM_DIRS = ('configs', 'tools')
# requirements/<stack>/: the OpenMMLab libraries of each stack, an extra each
STACKS = ('upstream', 'onedl')


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt; the pins' reasons are
    the comments there."""
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [
        line.strip() for line in lines
        if line.strip() and not line.lstrip().startswith('#')
    ]


def stack_requirements(stack):
    """What a stack of OpenMMLab libraries is made of: its mmcv, built with
    its ops (tools/install.sh), then mmengine, mmdet and mmseg."""
    return (read_requirements(f'{stack}/mmcv') +
            read_requirements(f'{stack}/openmmlab'))


class BuildPyWithConfigs(build_py):
    """Ships configs/ and tools/ inside the package, as mmcvt/.mim/configs
    and mmcvt/.mim/tools.

    A wheel gets copies, made in the build directory so that the checkout
    is left as it is. An editable install gets links in the checkout,
    mmcvt/.mim/configs -> ../../configs and the same for tools (git ignores
    them), so that an edited config or tool is seen without reinstalling;
    mmcvt.config_paths reads both.
    """

    def run(self):
        super().run()
        for name in MIM_DIRS:
            if self.editable_mode:
                link = HERE / 'mmcvt' / MIM / name
                if not link.is_symlink():
                    link.parent.mkdir(exist_ok=True)
                    link.symlink_to(os.path.relpath(HERE / name, link.parent))
            else:
                copy = Path(self.build_lib) / 'mmcvt' / MIM / name
                shutil.rmtree(copy, ignore_errors=True)  # files since removed
                shutil.copytree(
                    HERE / name,
                    copy,
                    ignore=shutil.ignore_patterns('__pycache__'))


version = {}
exec((HERE / 'mmcvt' / 'version.py').read_text(), version)

setup(
    name='mmcvt',
    version=version['__version__'],
    description='CvT (Convolutional vision Transformer) backbones for '
    'MMDetection 3.x and MMSegmentation 1.x',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmcvt', 'mmcvt.*']),
    # the doctor reads sys.stdlib_module_names and
    # importlib.metadata.packages_distributions (3.10); OneDL's libraries
    # need 3.10 too
    python_requires='>=3.10',
    # torch is deliberately not required: pip would replace a user's CUDA
    # build or fetch a CUDA one; tools/install.sh installs it
    # (requirements/torch.txt). mmcvt needs TORCH_MINIMUM or newer (see
    # mmcvt/version.py; `import mmcvt` checks it), which the 'torch' extra
    # asks for: pip install "mmcvt[torch]".
    install_requires=read_requirements('runtime'),
    # The OpenMMLab libraries come as one of two stacks, which install the
    # same modules (mmcv, mmengine, mmdet, mmseg) under different
    # distribution names: `pip install "mmcvt[upstream]"` or
    # `pip install "mmcvt[onedl]"` (`make install [STACK=onedl]`). Neither is
    # in install_requires, or pip would install the upstream distributions
    # next to OneDL's, over the same files; OpenMMLab's own packages leave
    # mmcv out of install_requires for a like reason (it must be built for
    # the installed torch).
    extras_require={
        **{
            stack: stack_requirements(stack)
            for stack in STACKS
        },
        'tests': read_requirements('tests'),
        # tools/deployment/export_onnx.py
        'onnx': read_requirements('onnx'),
        # `make lint` and `make format`
        'lint': read_requirements('lint'),
        'torch': [f'torch>={version["TORCH_MINIMUM"]}'],
    },
    cmdclass={'build_py': BuildPyWithConfigs},
)
