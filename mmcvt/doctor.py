"""Checks the environment mmcvt runs in, on one screen:

    python -m mmcvt.doctor

- which stack of OpenMMLab libraries is installed: the upstream one (mmcv,
  mmengine, mmdet, mmsegmentation) or OneDL's (onedl-mmcv, onedl-mmengine,
  onedl-mmdetection, onedl-mmsegmentation), which install the same modules;
- Python, torch and the packages mmcvt requires, against the versions it
  needs on that stack (the installed mmcvt's requirements and its extra of
  that stack's name, made from requirements/ and requirements/<stack>/);
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

When ``import mmcvt`` itself fails on a module it imports, this doctor
cannot run; the import then says what is wrong with
:func:`import_failure_message`: a missing module and what installs it, or an
installed one that fails to import, why, and what repairs it.
"""
import importlib
import importlib.util
import os
import platform
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

OK, INFO, WARN, FAIL = 'ok', '--', 'warn', 'FAIL'

# setup.py's onnx extra: the export, and onnxruntime that runs its graphs
ONNX_EXTRA = ('onnx', 'onnxruntime', 'onnxscript')
REINSTALL = ('reinstall mmcvt: `pip install -e .` in the checkout, or '
             '`pip install mmcvt-*.whl`')
HF_WEIGHTS = 'microsoft/cvt-'  # the hub repos of the released weights
# where mmcvt's own files are
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# mmcv built with its ops, against the torch that is installed
MMCV_BUILD = ('pip uninstall -y {name} && MMCV_WITH_OPS=1 {cuda}pip install '
              '--no-build-isolation --no-cache-dir "{requirement}"')
# the modules that each stack installs, each from a distribution of its own
LIBRARY_MODULES = ('mmcv', 'mmengine', 'mmdet', 'mmseg')
# the distributions of other modules that mmcvt imports under another name
MODULE_DISTRIBUTIONS = {'cv2': 'opencv-python'}


class Stack(NamedTuple):
    """A stack of OpenMMLab libraries that mmcvt runs on.

    ``name`` is setup.py's extra and the folder requirements/<name>/ that
    pin it; ``libraries`` are its distributions of LIBRARY_MODULES, in that
    order (tests/test_doctor.py checks them against the installed mmcvt's
    extras); ``install`` is the command that installs it in a checkout.
    """
    name: str
    title: str
    libraries: Tuple[str, ...]
    install: str

    @property
    def mmcv(self):
        return self.libraries[0]

    def distribution(self, module):
        """The distribution that installs ``module`` on this stack."""
        if module in LIBRARY_MODULES:
            return self.libraries[LIBRARY_MODULES.index(module)]
        return MODULE_DISTRIBUTIONS.get(module, module)


UPSTREAM = Stack('upstream', 'upstream OpenMMLab',
                 ('mmcv', 'mmengine', 'mmdet', 'mmsegmentation'),
                 'make install')
ONEDL = Stack('onedl', 'OneDL', ('onedl-mmcv', 'onedl-mmengine',
                                 'onedl-mmdetection', 'onedl-mmsegmentation'),
              'make install STACK=onedl')
STACKS = (UPSTREAM, ONEDL)  # the first is the default


class Finding(NamedTuple):
    status: str  # OK, INFO, WARN or FAIL
    what: str
    fix: Optional[str] = None


def installed_version(name):
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_stacks():
    """Each stack of which some library is installed, with those that are,
    the stack with the most of them first (the default on a tie)."""
    found = [(stack,
              [name for name in stack.libraries if installed_version(name)])
             for stack in STACKS]
    found = [(stack, names) for stack, names in found if names]
    return sorted(found, key=lambda found: -len(found[1]))


def find_stack():
    """The stack that mmcvt checks the environment against: the one whose
    libraries are installed (most of them, when both stacks' are), else
    the default one."""
    found = installed_stacks()
    return found[0][0] if found else STACKS[0]


def requirements(stack):
    """The installed mmcvt's requirements on ``stack``, as packaging
    Requirements: its own, those of its extra named after the stack, and
    torch's floor (which setup.py leaves to the 'torch' extra)."""
    from packaging.requirements import Requirement

    from .version import TORCH_MINIMUM
    lines = metadata.requires('mmcvt') or []
    found = [Requirement(line) for line in lines]
    found = [
        r for r in found
        if r.marker is None or r.marker.evaluate({'extra': stack.name})
    ]
    for requirement in found:
        requirement.marker = None  # the pin alone, as pip is to take it
    return [Requirement(f'torch>={TORCH_MINIMUM}')] + found


def install_command(requirement, stack):
    """The command that installs a requirement as mmcvt needs it: the
    stack's mmcv built with its compiled ops, the others from PyPI."""
    if requirement.name == stack.mmcv:
        return MMCV_BUILD.format(
            name=stack.mmcv, cuda='', requirement=requirement)
    return f'pip install "{requirement}"'


def check_stack():
    found = installed_stacks()
    if not found:
        names = ' or '.join(f'{", ".join(stack.libraries)} ({stack.title})'
                            for stack in STACKS)
        return [
            Finding(
                FAIL, f'no stack of OpenMMLab libraries: none of {names} '
                f'is installed',
                ' or '.join(f'`{stack.install}`'
                            for stack in STACKS) + ' in a checkout')
        ]
    (stack, names), others = found[0], found[1:]
    if not others:
        return [
            Finding(
                OK, f'stack: {stack.title} ({", ".join(names)}); checked '
                f'against mmcvt\'s \'{stack.name}\' pins')
        ]
    foreign = [name for _, names in others for name in names]
    titles = ', '.join(other.title for other, _ in others)
    return [
        Finding(
            FAIL, f'two stacks at once, which install the same modules: '
            f'{", ".join(names)} ({stack.title}) and {", ".join(foreign)} '
            f'({titles}); checked against the {stack.title} pins',
            f'keep one stack in an environment: pip uninstall -y '
            f'{" ".join(foreign)}, then reinstall what the checks below '
            f'name (or `{stack.install}` into a new environment)')
    ]


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


def check_packages(stack):
    findings, others = [], []
    main_packages = ('torch', 'numpy') + stack.libraries
    for requirement in requirements(stack):
        version = installed_version(requirement.name)
        spec = str(requirement.specifier) or 'any version'
        if version is None:
            problem = f'{requirement.name} is not installed (needs {spec})'
        elif requirement.specifier and not requirement.specifier.contains(
                version, prereleases=True):
            problem = f'{requirement.name} {version}: mmcvt needs {spec}'
        else:
            if requirement.name in main_packages:
                findings.append(
                    Finding(OK, f'{requirement.name} {version} (needs '
                            f'{spec})'))
            else:
                others.append(requirement.name)
            continue
        findings.append(
            Finding(FAIL, problem, install_command(requirement, stack)))
    if others:
        findings.append(
            Finding(
                OK, f'{len(others)} other requirements: '
                f'{", ".join(others)}'))
    return findings


def run_mmcv_ops(device):
    """Runs mmcv's NMS and RoIAlign, the compiled ops Mask R-CNN needs, on
    ``device``; raises what they raise."""
    import torch
    # importing them loads the compiled ops, and fails without them
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


def mmcv_build_command(stack, cuda=False):
    """The command that builds the stack's mmcv, as pinned, with its ops
    (for CUDA too with ``cuda``)."""
    requirement = next(
        (r for r in requirements(stack) if r.name == stack.mmcv), stack.mmcv)
    return MMCV_BUILD.format(
        name=stack.mmcv,
        cuda='FORCE_CUDA=1 ' if cuda else '',
        requirement=requirement)


def check_mmcv_ops(stack):
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
            findings.append(
                Finding(
                    FAIL, f'mmcv ops on {device.upper()} do not run '
                    f'({first_line(error)})',
                    'rebuild mmcv with its ops against this torch: ' +
                    mmcv_build_command(stack, cuda=device == 'cuda')))
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


def first_line(error):
    """``error`` in one line, its type first."""
    return f'{type(error).__name__}: {error}'.splitlines()[0]


def module_spec(module):
    """``module``'s spec, or None where it cannot be found."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent that fails; no __spec__
        return None


def top_level_module(filename):
    """The top-level module that the file ``filename`` belongs to, by the
    folders on sys.path (the innermost that holds it); None outside them.
    mmcvt's own files are mmcvt's wherever they are: an editable install
    finds them by a finder of its own, not through sys.path."""
    filename = os.path.abspath(filename)
    if filename.startswith(os.path.join(PACKAGE_DIR, '')):
        return 'mmcvt'
    roots = sorted({os.path.abspath(path or os.curdir)
                    for path in sys.path},
                   key=len,
                   reverse=True)
    for root in roots:
        if filename.startswith(os.path.join(root, '')):
            module = os.path.relpath(filename, root).split(os.sep)[0]
            return module.split('.')[0]  # a module file: name.py, name.*.so
    return None


def traceback_modules(error):
    """The top-level modules whose files ``error``'s traceback runs through,
    outermost first, leaving out the standard library's."""
    modules = []
    for frame in traceback.extract_tb(error.__traceback__):
        if not os.path.isfile(frame.filename):  # <frozen ...>, <string>
            continue
        module = top_level_module(frame.filename)
        if module is not None and module not in sys.stdlib_module_names:
            modules.append(module)
    return modules


def failing_modules(error):
    """The modules that ``error`` comes from, outermost first: those of its
    traceback but mmcvt; or, when a line of mmcvt's raised it, the module
    it names (importing a name that this version of the module lacks).
    Empty when the error is mmcvt's own."""
    modules = traceback_modules(error)
    if modules[-1:] == ['mmcvt']:
        named = error.name if isinstance(error, ImportError) else None
        named = (named or 'mmcvt').split('.')[0]
        return [] if named == 'mmcvt' else [named]
    modules = [module for module in modules if module != 'mmcvt']
    if not modules and isinstance(error, ModuleNotFoundError) and error.name:
        modules = [error.name.split('.')[0]]
    return modules


def distribution_of(module, stack):
    """The name of the installed distribution that holds ``module``, else
    the one that would on ``stack``."""
    names = metadata.packages_distributions().get(module, [])
    return names[0] if names else stack.distribution(module)


def missing_module(error):
    """The top-level module that ``error`` says is missing, if it is."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        module = error.name.split('.')[0]
        if module_spec(module) is None:
            return module
    return None


def pinned_install(modules, stack):
    """The installed distributions of ``modules``, each at its installed
    version, as pip takes them: ``"name==version"``."""
    pins = []
    for module in modules:
        name = distribution_of(module, stack)
        pin = f'"{name}=={installed_version(name)}"'
        if installed_version(name) and pin not in pins:
            pins.append(pin)
    return ' '.join(pins)


def repair(modules, error, stack):
    """What makes the first of ``modules`` import again, when it fails with
    ``error`` raised in the code of the last: what a plain `pip install`
    would not do, since they are installed."""
    module = modules[0]
    distribution = distribution_of(module, stack)
    spec = module_spec(module)
    if spec is not None and spec.origin:
        place = Path(spec.origin).parent
        installed_at = Path(
            metadata.distribution(distribution).locate_file('')).resolve()
        if not place.resolve().is_relative_to(installed_at):
            return (f'{module} is imported from {place}, which hides the '
                    f'installed {distribution} in {installed_at}: rename or '
                    f'move that folder, or run from another one')
    mismatched = [
        finding for finding in check_stack() + check_packages(stack)
        if finding.status == FAIL
    ]
    if mismatched:
        return (f'the environment does not match mmcvt\'s {stack.title} '
                f'pins ({"; ".join(f.what for f in mismatched)}), which '
                f'{module} may not import with: '
                f'{"; then ".join(f.fix for f in mismatched)} (or '
                f'`{stack.install}` in a checkout)')
    library = str(getattr(error, 'path', None) or '')
    if library.endswith(('.so', '.pyd')):  # an extension that did not load
        owner = top_level_module(library) or module
        command = (
            mmcv_build_command(stack) if owner == 'mmcv' else
            f'pip install --force-reinstall --no-deps --no-cache-dir '
            f'{pinned_install([owner], stack)}')
        return (f'its compiled module {library} does not load: it was built '
                f'against another torch, numpy or Python; rebuild it: '
                f'{command}')
    return (f'a plain `pip install` changes nothing, as it is installed; if '
            f'the files are damaged, reinstall them: pip install '
            f'--force-reinstall --no-deps '
            f'{pinned_install([module, modules[-1]], stack)}')


def diagnose_import_failure(error, stack=None):
    """What is wrong when an import fails with ``error``, and what fixes
    it, as ``(what, fix)``: a missing module and the command that installs
    it, or an installed module that fails to import, why, and what repairs
    it. None when the failure is mmcvt's own."""
    stack = stack or find_stack()
    missing = missing_module(error)
    if missing is not None:
        distribution = stack.distribution(missing)
        requirement = next((r for r in requirements(stack)
                            if r.name.lower() == distribution.lower()), None)
        return (f'mmcvt needs {missing}, which this environment lacks',
                install_command(requirement, stack)
                if requirement else f'pip install {distribution}')
    modules = failing_modules(error)
    if not modules:
        return None
    # the innermost of the stack's libraries that the error runs through
    # (mmcv fails when mmengine, which it imports, does), else the module
    # that mmcvt or the doctor imported
    libraries = [m for m in modules if m in LIBRARY_MODULES]
    module = libraries[-1] if libraries else modules[0]
    modules = modules[modules.index(module):]
    distribution = distribution_of(module, stack)
    version = installed_version(distribution)
    reason = first_line(error)
    if modules[-1] != module:
        reason += f' (in {modules[-1]}, which {module} imports)'
    if version is None:
        return (f'{module} fails to import ({reason}), and no distribution '
                f'of it is installed',
                f'pip install {distribution} (or `{stack.install}` in a '
                f'checkout)')
    if traceback_modules(error)[-1:] == ['mmcvt']:  # mmcvt's import line
        return (f'mmcvt cannot import what it needs from {module} '
                f'({distribution} {version}): {reason}',
                repair(modules, error, stack))
    return (f'{module} fails to import, though {distribution} {version} is '
            f'installed: {reason}', repair(modules, error, stack))


def import_failure_message(error):
    """What ``import mmcvt`` says when a module it imports fails with
    ``error``, which keeps this doctor from running: what is wrong and the
    command that fixes it. None when the failure is mmcvt's own, or when
    this diagnosis fails itself (no installed metadata, no packaging): the
    original error is then raised as it is."""
    try:
        diagnosis = diagnose_import_failure(error)
    except Exception:
        return None
    if diagnosis is None:
        return None
    what, fix = diagnosis
    if missing_module(error):
        fix = f'{fix} (or `{find_stack().install}` in a checkout)'
    return (f'{what}: {fix}, then `python -m mmcvt.doctor` checks the '
            f'rest')


def check_registries(stack):
    from mmcvt.models import CvT, QuickGELU
    findings = []
    for scope in ('mmdet', 'mmseg'):
        try:
            registry = importlib.import_module(f'{scope}.registry').MODELS
            # what building in the scope imports, so that a failure to
            # import is told here, with its diagnosis
            importlib.import_module(f'{scope}.models')
        except Exception as error:
            what, fix = diagnose_import_failure(error, stack) or (
                f'{scope} does not import ({first_line(error)})', REINSTALL)
            findings.append(Finding(FAIL, what, fix))
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
        try:
            backbone = registry.build(dict(type='CvT', arch=tiny))
        except Exception as error:  # what it imports on the way, or mmcvt
            diagnosis = diagnose_import_failure(error, stack)
            findings.append(
                Finding(
                    FAIL, f'CvT does not build in the {scope} scope '
                    f'({first_line(error)})',
                    diagnosis[1] if diagnosis else REINSTALL))
            continue
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


# the checks in the order of the screen; those of the stack's pins, its mmcv
# and its libraries' scopes take the stack
CHECKS = (check_stack, check_python, check_packages, check_mmcv_ops,
          check_cuda, check_registries, check_configs, check_hf_cache,
          check_onnx_extra)
STACK_CHECKS = (check_packages, check_mmcv_ops, check_registries)


def run_checks():
    findings = []
    stack = find_stack()
    for check in CHECKS:
        try:
            findings += check(stack) if check in STACK_CHECKS else check()
        except Exception as error:  # a check that breaks is a finding too
            findings.append(
                Finding(
                    FAIL, f'{check.__name__} failed: {first_line(error)}',
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
