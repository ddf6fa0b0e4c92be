"""Checks the environment mmcvt runs in, on one screen:

    python -m mmcvt.doctor

- Python, torch and the packages mmcvt requires, against the versions it
  needs (the installed mmcvt's requirements);
- whether mmcv's compiled ops (NMS, RoIAlign) run on the CPU, and on CUDA
  when there is a GPU;
- CUDA, the GPU and whether it computes in bf16;
- ``CvT`` and ``QuickGELU`` in MMDetection's and MMSegmentation's scopes;
- the configs packaged with mmcvt;
- the Hugging Face cache, whether it is offline, and which CvT weights it
  holds;
- the optional ONNX export extra.

Every problem comes with the command that fixes it. The exit status is 1
when something mmcvt needs is missing or broken, 0 otherwise (warnings,
such as no GPU or an offline cache without weights, do not count).
"""
import importlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Optional

OK, INFO, WARN, FAIL = 'ok', '--', 'warn', 'FAIL'

# The packages whose versions the screen shows one by one; the other
# requirements are summed up in one line unless one of them is wrong.
MAIN_PACKAGES = ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation',
                 'numpy')
ONNX_EXTRA = ('onnx', 'onnxruntime', 'onnxscript')
REINSTALL = ('reinstall mmcvt: `pip install -e .` in the checkout, or '
             '`pip install mmcvt-*.whl`')
SCOPES = {'mmdet': 'mmdet', 'mmseg': 'mmsegmentation'}  # scope: distribution
HF_WEIGHTS = 'microsoft/cvt-'  # the hub repos of the released weights
# mmcv built with its ops, against the torch that is installed
MMCV_BUILD = ('pip uninstall -y mmcv && MMCV_WITH_OPS=1 {cuda}pip install '
              '--no-build-isolation --no-cache-dir "mmcv==2.1.0"')


class Finding(NamedTuple):
    status: str  # OK, INFO, WARN or FAIL
    what: str
    fix: Optional[str] = None


def requirements():
    """The installed mmcvt's requirements, as packaging Requirements, with
    torch's floor (which setup.py leaves to the 'torch' extra)."""
    from packaging.requirements import Requirement

    from .version import TORCH_MINIMUM
    lines = metadata.requires('mmcvt') or []
    found = [Requirement(line) for line in lines]
    found = [r for r in found if r.marker is None or r.marker.evaluate()]
    return [Requirement(f'torch>={TORCH_MINIMUM}')] + found


def installed_version(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install_command(requirement):
    """The command that installs a requirement as mmcvt needs it: mmcv
    built with its compiled ops, the others from PyPI."""
    if requirement.name == 'mmcv':
        return MMCV_BUILD.format(cuda='')
    return f'pip install "{requirement}"'


# the distributions of modules that mmcvt imports under another name
_DISTRIBUTIONS = {'mmseg': 'mmsegmentation', 'cv2': 'opencv-python'}


def missing_module_message(module):
    """What ``import mmcvt`` says when a module it imports is missing, which
    keeps this doctor from running: the requirement, and its install
    command."""
    distribution = _DISTRIBUTIONS.get(module, module)
    try:
        requirement = next(r for r in requirements()
                           if r.name.lower() == distribution.lower())
        fix = install_command(requirement)
    except Exception:  # no installed metadata, no packaging, no such entry
        fix = f'pip install {distribution}'
    return (f'mmcvt needs {module}, which this environment lacks: {fix} (or '
            f'`make install` in a checkout), then `python -m mmcvt.doctor` '
            f'checks the rest')


def check_python():
    required = metadata.metadata('mmcvt')['Requires-Python'] or ''
    version = platform.python_version()
    from packaging.specifiers import SpecifierSet
    if version in SpecifierSet(required):
        return [Finding(OK, f'Python {version} (mmcvt needs {required})')]
    return [
        Finding(
            FAIL, f'Python {version}: mmcvt needs {required}',
            'make a virtual environment with a newer Python, e.g. '
            '`python3.11 -m venv .venv`')
    ]


def check_packages():
    findings, others = [], []
    for requirement in requirements():
        version = installed_version(requirement.name)
        spec = str(requirement.specifier) or 'any version'
        if version is None:
            problem = f'{requirement.name} is not installed (needs {spec})'
        elif requirement.specifier and not requirement.specifier.contains(
                version, prereleases=True):
            problem = f'{requirement.name} {version}: mmcvt needs {spec}'
        else:
            if requirement.name in MAIN_PACKAGES:
                findings.append(
                    Finding(OK, f'{requirement.name} {version} (needs '
                            f'{spec})'))
            else:
                others.append(requirement.name)
            continue
        findings.append(Finding(FAIL, problem, install_command(requirement)))
    if others:
        findings.append(
            Finding(
                OK, f'{len(others)} other requirements: '
                f'{", ".join(others)}'))
    return findings


def run_mmcv_ops(device):
    """Runs mmcv's NMS and RoIAlign, the compiled ops Mask R-CNN needs, on
    ``device``; raises what they raise."""
    importlib.import_module('mmcv._ext')  # the compiled ops themselves
    import torch
    from mmcv.ops import nms, roi_align
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]],
                         device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    kept, _ = nms(boxes, scores, iou_threshold=0.5)
    if kept.shape[0] != 1:
        raise RuntimeError(f'nms kept {kept.shape[0]} of 2 overlapping '
                           f'boxes, not 1')
    features = torch.ones(1, 1, 8, 8, device=device)
    rois = torch.tensor([[0., 0., 0., 4., 4.]], device=device)
    pooled = roi_align(features, rois, (2, 2), 1.0, 0, 'avg', True)
    if not torch.allclose(pooled, torch.ones_like(pooled)):
        raise RuntimeError('roi_align of a constant map is not constant')


def check_mmcv_ops():
    import torch
    findings = []
    for device in ('cpu', 'cuda'):
        if device == 'cuda' and not torch.cuda.is_available():
            findings.append(
                Finding(INFO, 'mmcv ops on CUDA: no GPU, not '
                        'checked'))
            continue
        try:
            run_mmcv_ops(device)
        except Exception as error:  # an ImportError, or the op's own error
            reason = f'{type(error).__name__}: {error}'.splitlines()[0]
            findings.append(
                Finding(
                    FAIL,
                    f'mmcv ops on {device.upper()} do not run ({reason})',
                    'rebuild mmcv with its ops against this torch: ' +
                    MMCV_BUILD.format(
                        cuda='FORCE_CUDA=1 ' if device == 'cuda' else '')))
        else:
            findings.append(
                Finding(
                    OK, f'mmcv ops (NMS, RoIAlign) run on '
                    f'{device.upper()}'))
    return findings


def check_cuda():
    import torch
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return [
                Finding(
                    INFO, f'CUDA: none, torch {torch.__version__} is '
                    f'a CPU build (training and tests run on the '
                    f'CPU)')
            ]
        return [
            Finding(
                WARN,
                f'CUDA: torch is built for CUDA {torch.version.cuda}, but '
                f'sees no GPU', 'check the driver and the visible devices: '
                '`nvidia-smi`; `echo $CUDA_VISIBLE_DEVICES`')
        ]
    name = torch.cuda.get_device_name(0)
    count = torch.cuda.device_count()
    bf16 = torch.cuda.is_bf16_supported()
    bf16 = 'yes' if bf16 else 'no (AMP in fp16 only: bf16 needs Ampere on)'
    return [
        Finding(OK,
                f'CUDA {torch.version.cuda}: {count} x {name}; bf16 {bf16}')
    ]


def check_registries():
    from mmcvt.models import CvT, QuickGELU
    findings = []
    for scope, package in SCOPES.items():
        try:
            registry = importlib.import_module(f'{scope}.registry').MODELS
        except ImportError as error:
            requirement, = (r for r in requirements() if r.name == package)
            findings.append(
                Finding(FAIL, f'{scope} does not import ({error})',
                        install_command(requirement)))
            continue
        found = registry.get('CvT')
        if found is not CvT:
            what = (f'CvT is not registered in the {scope} scope'
                    if found is None else f'CvT in the {scope} scope is '
                    f'{found.__module__}\'s, not mmcvt\'s')
            findings.append(Finding(FAIL, what, REINSTALL))
            continue
        # MMSegmentation registers a QuickGELU of its own (for CLIP); what
        # matters is the activation CvT builds
        tiny = dict(
            embed_dims=[8, 8, 8], num_heads=[1, 1, 1], depths=[1, 1, 1])
        backbone = registry.build(dict(type='CvT', arch=tiny))
        if not any(isinstance(m, QuickGELU) for m in backbone.modules()):
            findings.append(
                Finding(
                    FAIL, f'CvT built in the {scope} scope has no mmcvt '
                    f'QuickGELU', REINSTALL))
            continue
        named = registry.get('QuickGELU')
        note = ('' if named is QuickGELU else
                f'; the name QuickGELU there is {named.__module__}\'s, and '
                f'CvT builds mmcvt\'s all the same')
        findings.append(
            Finding(OK, f'CvT and QuickGELU in the {scope} '
                    f'scope{note}'))
    return findings


def check_configs():
    from mmcvt import config_paths
    try:
        names = config_paths.packaged_configs()
    except FileNotFoundError:
        return [
            Finding(
                FAIL, f'no packaged configs: '
                f'{config_paths.CONFIG_DIR} is missing', REINSTALL)
        ]
    return [
        Finding(
            OK, f'{len(names)} packaged configs in '
            f'{config_paths.CONFIG_DIR}')
    ]


def cached_cvt_weights(cache):
    """The hub repos of CvT weights in the Hugging Face cache ``cache``."""
    prefix = 'models--' + HF_WEIGHTS.replace('/', '--')
    if not os.path.isdir(cache):
        return []
    return sorted(name[len('models--'):].replace('--', '/')
                  for name in os.listdir(cache) if name.startswith(prefix))


def check_hf_cache():
    from huggingface_hub import constants
    cache = constants.HF_HUB_CACHE
    cached = cached_cvt_weights(cache)
    offline = constants.HF_HUB_OFFLINE
    where = (f'Hugging Face cache {cache}, '
             f'{"offline (HF_HUB_OFFLINE)" if offline else "online"}; '
             f'CvT weights cached: {", ".join(cached) or "none"}')
    if offline and not cached:
        return [
            Finding(
                WARN, where + ': the configs\' hf://microsoft/cvt-* weights '
                'cannot be downloaded',
                'download them where the network is, `huggingface-cli '
                'download microsoft/cvt-13`, and copy the cache here; or '
                'unset HF_HUB_OFFLINE')
        ]
    return [Finding(INFO if not cached else OK, where)]


def check_onnx_extra():
    missing = [name for name in ONNX_EXTRA if installed_version(name) is None]
    if missing:
        return [
            Finding(
                INFO, f'ONNX export extra: {", ".join(missing)} '
                f'not installed (only tools/deployment needs it: '
                f'`pip install -e ".[onnx]"`)')
        ]
    return [
        Finding(
            OK, 'ONNX export extra: ' +
            ', '.join(f'{name} {installed_version(name)}'
                      for name in ONNX_EXTRA))
    ]


CHECKS = (check_python, check_packages, check_mmcv_ops, check_cuda,
          check_registries, check_configs, check_hf_cache, check_onnx_extra)


def run_checks():
    findings = []
    for check in CHECKS:
        try:
            findings += check()
        except Exception as error:  # a check that breaks is a finding too
            findings.append(
                Finding(
                    FAIL, f'{check.__name__} failed: {type(error).__name__}: '
                    f'{error}'.splitlines()[0],
                    'reinstall mmcvt and its requirements: `make install` in '
                    'the checkout'))
    return findings


def report(findings, out=sys.stdout):
    """Prints the findings, then each problem's fix; returns the exit
    status."""
    from .version import __version__
    print(f'mmcvt {__version__} at {Path(__file__).parent}', file=out)
    for finding in findings:
        print(f'  {finding.status:>4}  {finding.what}', file=out)
    problems = [f for f in findings if f.fix]
    if problems:
        print('to fix:', file=out)
    for finding in problems:
        print(f'  {finding.status:>4}  {finding.fix}', file=out)
    failed = sum(f.status == FAIL for f in findings)
    print(
        f'{failed} problem{"s" * (failed != 1)} that mmcvt cannot run with'
        if failed else 'mmcvt has what it needs',
        file=out)
    return 1 if failed else 0


def main():
    return report(run_checks())


if __name__ == '__main__':
    sys.exit(main())
