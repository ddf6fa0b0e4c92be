"""What a tool reads, checked before it starts working: a config, a
checkpoint, an exported graph or an image that is not there is a usage
error naming it, not mmengine's, onnxruntime's or OpenCV's traceback once
the tool has begun.

Configs come as files, or, for the tools that read them with
:func:`mmcvt.analysis.config_from`, as ``package::path`` names of an
installed OpenMMLab package's configs (``mmdet::dino/...``). Such a name of
a package that is not installed is refused here: mmengine's ``get_config``
would ``pip install`` the package.
"""
import os
import os.path as osp

from .arguments import argument_type, named


def _check_file(path, what, kind):
    if not osp.isfile(path):
        state = 'is a folder' if osp.isdir(path) else 'does not exist'
        raise FileNotFoundError(f'{named(what, path)} {state}: name {kind}')


def check_config_file(path, what='the config'):
    """Raises FileNotFoundError unless ``path`` is a file."""
    _check_file(path, what, 'a config file')


def check_config_name(name, what='the config'):
    """Raises unless ``name`` is a config file, or ``package::path`` of a
    config inside an installed package (its ``.mim/configs/path``), as
    mmengine's ``get_config`` reads them.

    Raises:
        FileNotFoundError: No such file, no such package installed, or no
            such config in the package.
    """
    if '::' not in name:
        check_config_file(name, what)
        return
    from mmengine.utils import get_installed_path, is_installed
    package, relative = name.split('::', 1)
    config = named(what, name)
    if not is_installed(package):
        raise FileNotFoundError(
            f'{config}: {package} is not installed; install it, or name a '
            f'config file')
    configs = osp.join(get_installed_path(package), '.mim', 'configs')
    if not osp.isfile(osp.join(configs, relative)):
        raise FileNotFoundError(f'{config}: {package} has no config '
                                f'{relative} in {configs}')


def check_checkpoint(path, what='the checkpoint'):
    """Raises FileNotFoundError unless ``path`` is a file or a URL
    (``https://``, ``hf://`` and the other schemes of mmengine's
    CheckpointLoader, which check what they fetch)."""
    if '://' not in os.fspath(path):
        _check_file(path, what, 'a checkpoint file or URL')


def check_graph(path, what='the graph'):
    """Raises FileNotFoundError unless ``path`` is a file: an exported
    graph, which onnxruntime reads from a file only."""
    _check_file(path, what, 'an .onnx file of tools/deployment/export_onnx.py')


def check_weights(path, what='the weights'):
    """Raises FileNotFoundError unless ``path`` is a checkpoint (see
    :func:`check_checkpoint`) or, when its name ends in ``.onnx``, a graph
    file (see :func:`check_graph`)."""
    if os.fspath(path).lower().endswith('.onnx'):
        check_graph(path, what)
    else:
        check_checkpoint(path, what)


def check_image_file(path, what='the image'):
    """Raises FileNotFoundError unless ``path`` is a file."""
    _check_file(path, what, 'an image file')


config_file = argument_type(check_config_file, 'config_file',
                            'argparse type: a config file that exists.')
config_name = argument_type(
    check_config_name, 'config_name',
    'argparse type: a config file, or an installed package\'s '
    '``package::path`` (see check_config_name).')
checkpoint_path = argument_type(check_checkpoint, 'checkpoint_path',
                                'argparse type: a checkpoint file or URL.')
graph_file = argument_type(check_graph, 'graph_file',
                           'argparse type: an exported .onnx graph file.')
weights_path = argument_type(
    check_weights, 'weights_path',
    'argparse type: a checkpoint file or URL, or an .onnx graph file.')
image_file = argument_type(check_image_file, 'image_file',
                           'argparse type: an image file that exists.')
