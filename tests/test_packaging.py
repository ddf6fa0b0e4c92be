"""The package as pip installs it: configs/ and tools/ travel inside it, as
mmcvt/.mim/configs and mmcvt/.mim/tools, a config anywhere can inherit a
packaged one, and OpenMMLab's mim trains and tests with the packaged tools.

The installs go into fresh virtual environments that see this one's
site-packages through a .pth file, for torch, mmcv and the rest, and get
mmcvt only from what is installed into them."""
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import torch

from mmcvt import config_paths
from mmcvt.compat import ONEDL_DISTRIBUTIONS
from .tiny_models import write_tiny_config
from .utils import REPO, STACK, load_tool

BUILD_OUTPUTS = shutil.ignore_patterns('.git', '.venv', 'build', 'dist',
                                       '*.egg-info', '__pycache__', '.mim',
                                       '.pytest_cache', 'data', 'work_dirs')


def run(*command, cwd):
    """Runs a command outside this checkout, with nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([str(c) for c in command],
                            cwd=cwd,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=600)
    assert result.returncode == 0, (
        result.stdout[-2000:] + result.stderr[-3000:])
    return result.stdout


def fresh_venv(path):
    """A virtual environment that sees this one's packages but not mmcvt
    (this one has mmcvt as an editable install, which a plain path in a
    .pth file does not activate)."""
    run(sys.executable, '-m', 'venv', '--without-pip', path, cwd=path.parent)
    python = path / 'bin' / 'python'
    purelib = run(
        python,
        '-c',
        'import sysconfig; print(sysconfig.get_paths()["purelib"])',
        cwd=path.parent).strip()
    with open(os.path.join(purelib, 'parent_env.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    return python


def pip_install(python, *args, cwd):
    # this environment's pip, seen through the .pth file; --ignore-installed:
    # the editable mmcvt of this environment is seen too, and must be neither
    # taken as installed nor uninstalled
    run(python,
        '-m',
        'pip',
        'install',
        '--disable-pip-version-check',
        '--no-deps',
        '--no-build-isolation',
        '--ignore-installed',
        *args,
        cwd=cwd)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A copy of the checkout without its build outputs and environment."""
    copy = tmp_path_factory.mktemp('checkout') / 'mmcvt'
    shutil.copytree(REPO, copy, ignore=BUILD_OUTPUTS)
    return copy


@pytest.fixture(scope='module')
def sdist(source):
    run(sys.executable,
        'setup.py',
        '-q',
        'sdist',
        '-d',
        source / 'dist',
        cwd=source)
    tarball, = (source / 'dist').glob('mmcvt-*.tar.gz')
    return tarball


@pytest.fixture(scope='module')
def wheel_env(sdist, tmp_path_factory):
    """A fresh environment with the wheel built from the sdist, as pip
    builds it for `pip install mmcvt`."""
    root = tmp_path_factory.mktemp('wheel_env')
    run(sys.executable,
        '-m',
        'pip',
        'wheel',
        '--disable-pip-version-check',
        '--no-deps',
        '--no-build-isolation',
        '--wheel-dir',
        root / 'wheels',
        sdist,
        cwd=root)
    wheel, = (root / 'wheels').glob('mmcvt-*.whl')
    python = fresh_venv(root / 'venv')
    pip_install(python, wheel, cwd=root)
    return python, root


@pytest.fixture(scope='module')
def printed_config_paths(wheel_env):
    """What `python -m mmcvt.config_paths` prints in the wheel's
    environment: the absolute path of every shipped config."""
    python, root = wheel_env
    return run(python, '-m', 'mmcvt.config_paths', cwd=root).split()


@pytest.mark.slow
def test_the_sdist_carries_the_configs_tools_and_requirements(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.partition('/')[2] for name in tar.getnames()}
    assert {
        'configs/maskrcnn_cvt13_coco.py', 'configs/_base_/cvt13_detection.py',
        'configs/demo/upernet_cvt13_shapes.py',
        'configs/_base_/cvt_four_levels.py', 'configs/semfpn_cvt21_ade20k.py',
        'tools/train.py', 'tools/test.py', 'tools/infer.py',
        'tools/deployment/export_onnx.py', 'requirements/runtime.txt',
        'requirements/upstream/mmcv.txt', 'requirements/onedl/mmcv.txt',
        'requirements/onedl/openmmlab.txt', 'requirements/onnx.txt'
    } <= names


@pytest.mark.slow
def test_the_wheel_ships_every_config_inside_its_installed_package(
        wheel_env, printed_config_paths):
    _, root = wheel_env
    installed = root / 'venv' / 'lib'
    shipped = set()
    for path in printed_config_paths:
        package_dir, name = path.split('/mmcvt/.mim/configs/')
        assert package_dir.startswith(str(installed))
        assert package_dir.endswith('site-packages')
        shipped.add(name)
    in_checkout = {
        path.relative_to(REPO / 'configs').as_posix()
        for path in (REPO / 'configs').rglob('*.py')
        if '_base_' not in path.parts
    }
    assert shipped == in_checkout


def files_under(directory):
    return {
        path.relative_to(directory).as_posix()
        for path in directory.rglob('*')
        if path.is_file() and '__pycache__' not in path.parts
    }


@pytest.mark.slow
def test_the_wheel_ships_the_tools_beside_its_configs(wheel_env,
                                                      printed_config_paths):
    _, root = wheel_env
    package_dir = printed_config_paths[0].split('/.mim/configs/')[0]
    assert package_dir.startswith(str(root / 'venv'))
    tools = Path(package_dir) / '.mim' / 'tools'
    assert files_under(tools) == files_under(REPO / 'tools')


@pytest.mark.slow
def test_a_config_outside_the_repo_inherits_a_packaged_one(
        wheel_env, printed_config_paths):
    python, root = wheel_env
    base, = [
        path for path in printed_config_paths
        if path.endswith('/cascade-maskrcnn_cvt13_ms-3x_coco.py')
    ]
    user_config = root / 'my_cascade.py'
    user_config.write_text(
        textwrap.dedent(f'''\
        _base_ = {base!r}
        model = dict(backbone=dict(drop_path_rate=0.3))
        '''))
    loaded = json.loads(
        run(python,
            '-c',
            textwrap.dedent('''\
        import json, sys
        from mmengine.config import Config
        cfg = Config.fromfile(sys.argv[1])  # imports mmcvt: custom_imports
        import mmcvt
        print(json.dumps(dict(
            mmcvt=mmcvt.__file__, detector=cfg.model.type,
            backbone=cfg.model.backbone.type,
            drop_path_rate=cfg.model.backbone.drop_path_rate)))
        '''),
            user_config,
            cwd=root))
    assert loaded['mmcvt'].startswith(str(root / 'venv'))
    assert (loaded['detector'], loaded['backbone']) == ('CascadeRCNN', 'CvT')
    assert loaded['drop_path_rate'] == 0.3


@pytest.mark.slow
def test_a_packaged_config_with_an_extra_levels_neck_builds_its_model(
        wheel_env, printed_config_paths):
    python, root = wheel_env
    config, = [
        path for path in printed_config_paths
        if path.endswith('/semfpn_cvt21_ade20k.py')
    ]
    # on OneDL, an mmseg:: base resolves only once mmcvt is imported, which
    # custom_imports does after the bases
    first = 'import mmcvt\n' if STACK == 'onedl' else ''
    built = json.loads(
        run(python,
            '-c',
            first + textwrap.dedent('''\
        import json, sys
        from mmengine.config import Config
        from mmengine.registry import MODELS, init_default_scope
        cfg = Config.fromfile(sys.argv[1])  # imports mmcvt: custom_imports
        init_default_scope(cfg.default_scope)
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        print(json.dumps(dict(
            necks=[type(model.neck).__module__,
                   type(model.neck.neck).__module__],
            last_stage_blocks=len(model.backbone.stages[2].blocks))))
        '''),
            config,
            cwd=root))
    # ExtraLevels, and inside it the recipe's FPN, in the config's scope
    assert [module.split('.')[:2]
            for module in built['necks']] == [['mmcvt', 'models'],
                                              ['mmseg', 'models']]
    assert built['last_stage_blocks'] == 16  # CvT-21's, not CvT-13's 10


@pytest.mark.slow
def test_an_editable_install_links_the_checkouts_configs_and_tools(
        source, tmp_path):
    python = fresh_venv(tmp_path / 'venv')
    pip_install(python, '-e', source, cwd=tmp_path)
    package = run(
        python,
        '-c', 'import importlib.util; '
        'print(importlib.util.find_spec("mmcvt").origin)',
        cwd=tmp_path).strip()
    assert package == str(source / 'mmcvt' / '__init__.py')
    # links, so that an edited config or tool is seen without reinstalling
    for name in ('configs', 'tools'):
        link = source / 'mmcvt' / '.mim' / name
        assert link.is_symlink() and link.resolve() == source / name


# ---- mim --------------------------------------------------------------------
# what each demo trains on, by make_shapes_dataset.py's --task
SHAPES_TASKS = {'upernet': 'semseg', 'maskrcnn': 'instance'}


def write_mim_config(kind, directory, printed_config_paths):
    """A config in ``directory``, outside the repo, that inherits the
    packaged demo of ``kind`` ('upernet' or 'maskrcnn') with a tiny CvT,
    and trains one iteration on 2 images of the shapes data."""
    directory.mkdir()
    data_root = directory / 'data'
    load_tool('misc/make_shapes_dataset.py').main([
        '--task', SHAPES_TASKS[kind], '--out',
        str(data_root), '--num-train', '2', '--num-val', '2'
    ])
    base, = [
        path for path in printed_config_paths
        if path.endswith(f'/demo/{kind}_cvt13_shapes.py')
    ]
    schedule = ('train_cfg = dict(max_iters=1, val_interval=1)\n'
                if kind == 'upernet' else
                'train_cfg = dict(max_epochs=1, val_interval=1)\n'
                'val_evaluator = dict(ann_file='
                f'{str(data_root / "annotations/instances_val.json")!r})\n'
                'test_evaluator = val_evaluator\n')
    return write_tiny_config(
        kind,
        directory,
        base=base,
        extra=textwrap.dedent(f"""\
            train_dataloader = dict(
                batch_size=2, dataset=dict(data_root={str(data_root) + '/'!r}))
            val_dataloader = dict(
                dataset=dict(data_root={str(data_root) + '/'!r}))
            test_dataloader = val_dataloader
            default_hooks = dict(checkpoint=dict(interval=1))
            """) + schedule)


@pytest.fixture(scope='module')
def mim_runs(wheel_env, printed_config_paths):
    """`mim train mmcvt CONFIG` for one iteration, then `mim test mmcvt
    CONFIG --checkpoint` of its checkpoint, in the wheel's environment, on
    the UperNet demo's CONFIG of :func:`write_mim_config`."""
    python, root = wheel_env
    directory = root / 'mim'
    config = write_mim_config('upernet', directory, printed_config_paths)
    trained = run(
        python,
        '-m',
        'mim',
        'train',
        'mmcvt',
        config,
        '--work-dir',
        directory / 'train',
        cwd=directory)
    tested = run(
        python,
        '-m',
        'mim',
        'test',
        'mmcvt',
        config,
        '--checkpoint',
        directory / 'train' / 'iter_1.pth',
        '--work-dir',
        directory / 'test',
        cwd=directory)
    tools = root / 'venv' / 'lib'
    return tools, directory, trained, tested


# MMDetection's and MMSegmentation's own train.py, which build mmengine's
# Runner and keep mmengine's checkpoint loaders: the packaged config's
# custom_imports bring CvT and mmcvt's hooks
UPSTREAM_TRAIN = {'mmdet': 'maskrcnn', 'mmseg': 'upernet'}


@pytest.fixture(scope='module', params=sorted(UPSTREAM_TRAIN))
def upstream_mim_train(request, wheel_env, printed_config_paths):
    """`mim train mmdet|mmseg CONFIG` (on OneDL `mim train
    onedl-mmdetection|onedl-mmsegmentation CONFIG`) in the wheel's
    environment: the library, the work dir and the completed process."""
    library = request.param
    python, root = wheel_env
    directory = root / f'mim_{library}'
    config = write_mim_config(UPSTREAM_TRAIN[library], directory,
                              printed_config_paths)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    # openmim finds a codebase by its distribution's name
    codebase = ONEDL_DISTRIBUTIONS[library] if STACK == 'onedl' else library
    result = subprocess.run([
        str(python), '-m', 'mim', 'train', codebase,
        str(config), '--work-dir',
        str(directory / 'train')
    ],
                            cwd=directory,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=600)
    return library, directory / 'train', result


@pytest.fixture
def upstream_mim_trained(upstream_mim_train):
    """The runs of :func:`upstream_mim_train` that this stack can parse."""
    library = upstream_mim_train[0]
    if parses_before_mmcvt(library):
        pytest.skip(f'OneDL: {library}\'s train.py cannot (the test below)')
    return upstream_mim_train


def parses_before_mmcvt(library):
    """Whether ``library``'s train.py fails on this stack to parse a config
    that inherits its bases: onedl-mmengine resolves mmseg:: only once
    mmcvt is imported, which custom_imports does after the bases."""
    return library == 'mmseg' and STACK == 'onedl'


@pytest.mark.slow
def test_upstreams_own_train_script_trains_a_packaged_config(
        upstream_mim_trained):
    library, work_dir, result = upstream_mim_trained
    assert result.returncode == 0, (
        result.stdout[-2000:] + result.stderr[-3000:])
    command = result.stdout.split('Training command is ', 1)[1].split()
    assert command[1].endswith(f'/site-packages/{library}/.mim/tools/'
                               f'train.py')
    assert 'StrictCheckpointRunner' not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_checkpoint_of_upstreams_train_script_is_plain_weights_only(
        upstream_mim_trained):
    library, work_dir, result = upstream_mim_trained
    checkpoint, = work_dir.glob('*_1.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(
        checkpoint) == []


@pytest.mark.slow
@pytest.mark.skipif(STACK != 'onedl', reason='onedl-mmengine')
def test_on_onedl_mmsegs_train_script_cannot_parse_mmseg_bases(
        upstream_mim_train):
    library, _, result = upstream_mim_train
    if not parses_before_mmcvt(library):
        pytest.skip(f'{library} parses its bases')
    assert 'mmsegmentation is not installed' in result.stderr


@pytest.mark.slow
def test_mim_train_runs_the_packaged_train_script(mim_runs):
    tools, directory, trained, _ = mim_runs
    command = trained.split('Training command is ', 1)[1].split()
    assert command[1].startswith(str(tools))
    assert command[1].endswith('/site-packages/mmcvt/.mim/tools/train.py')
    assert 'Training finished successfully' in trained
    assert (directory / 'train' / 'iter_1.pth').is_file()


@pytest.mark.slow
def test_mim_test_runs_the_packaged_test_script_on_its_checkpoint(mim_runs):
    tools, _, _, tested = mim_runs
    command = tested.split('Testing command is ', 1)[1].split()
    assert command[1].startswith(str(tools))
    assert command[1].endswith('/site-packages/mmcvt/.mim/tools/test.py')
    assert 'mIoU' in tested
    assert 'Testing finished successfully' in tested


# ---- mmcvt.config_paths -----------------------------------------------------
def test_config_path_is_the_absolute_path_of_a_shipped_config(
        tmp_path, monkeypatch):
    (tmp_path / 'demo').mkdir()
    (tmp_path / 'demo' / 'a.py').write_text('')
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path)
    assert config_paths.config_path('demo/a.py') == str(tmp_path / 'demo/a.py')


def test_an_unknown_config_is_an_error_listing_the_shipped_ones(
        tmp_path, monkeypatch):
    (tmp_path / 'a.py').write_text('')
    (tmp_path / '_base_').mkdir()
    (tmp_path / '_base_' / 'part.py').write_text('')
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path)
    with pytest.raises(
            FileNotFoundError, match=r"no config 'b.py'; it ships: a.py$"):
        config_paths.config_path('b.py')


def test_an_install_without_configs_is_an_error_saying_to_reinstall(
        tmp_path, monkeypatch):
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path / 'absent')
    with pytest.raises(FileNotFoundError, match='Reinstall'):
        config_paths.config_path('maskrcnn_cvt13_coco.py')


def test_python_m_config_paths_prints_the_named_configs_paths(
        tmp_path, monkeypatch, capsys):
    for name in ('a.py', 'b.py'):
        (tmp_path / name).write_text('')
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path)
    config_paths.main(['b.py'])
    assert capsys.readouterr().out == f'{tmp_path / "b.py"}\n'


def test_listing_the_configs_of_an_install_without_them_is_an_error(
        tmp_path, monkeypatch):
    monkeypatch.setattr(config_paths, 'CONFIG_DIR', tmp_path / 'absent')
    with pytest.raises(FileNotFoundError, match='Reinstall'):
        config_paths.main([])
