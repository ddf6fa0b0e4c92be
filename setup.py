from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt; the pins' reasons are
    the comments there."""
    lines = (HERE / 'requirements' / f'{name}.txt').read_text().splitlines()
    return [line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith('#')]


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
    python_requires='>=3.9',
    # torch is deliberately not listed: pip would replace a user's CUDA build
    # or fetch a CUDA one; tools/install.sh installs it (requirements/torch.txt)
    install_requires=read_requirements('mmcv') + read_requirements('runtime'),
    extras_require={'tests': read_requirements('tests')},
)
