"""Where the configs shipped with mmcvt are, for configs written elsewhere.

An install of mmcvt carries its configs in ``mmcvt/.mim/configs``, where
OpenMMLab packages keep theirs: a copy in a wheel, a link to the checkout's
``configs/`` in an editable install (see setup.py). A config anywhere can
inherit one by its absolute path:

    python -m mmcvt.config_paths maskrcnn_cvt13_coco.py   # prints the path

    # my_config.py
    _base_ = '/.../site-packages/mmcvt/.mim/configs/maskrcnn_cvt13_coco.py'

and Python code can load one with
``Config.fromfile(config_path('maskrcnn_cvt13_coco.py'))``.
``mmcvt::maskrcnn_cvt13_coco.py`` does not work: mmengine 0.10 resolves
``package::`` only for the OpenMMLab packages it lists itself.
"""
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / '.mim' / 'configs'


def config_path(name):
    """The absolute path of a config shipped with mmcvt.

    Args:
        name (str): Its path under configs/, e.g. ``'maskrcnn_cvt13_coco.py'``
            or ``'demo/maskrcnn_cvt13_shapes.py'``.

    Raises:
        ValueError: When ``name`` leads out of the configs' directory (an
            absolute path, ``..``).
        FileNotFoundError: When there is no such config, naming those there
            are, or when mmcvt was installed without its configs.
    """
    path = CONFIG_DIR / name
    # resolved, as an editable install's CONFIG_DIR is a link to configs/
    if not path.resolve().is_relative_to(CONFIG_DIR.resolve()):
        raise ValueError(
            f'{name!r} is not a config shipped with mmcvt: name one by its '
            f'path under {CONFIG_DIR}, as `python -m mmcvt.config_paths` '
            f'lists them')
    if not path.is_file():
        raise FileNotFoundError(f'mmcvt ships no config {name!r}; it ships: '
                                f'{", ".join(packaged_configs())}')
    return str(path)


def packaged_configs():
    """The names of the shipped configs, as :func:`config_path` takes them.

    Raises:
        FileNotFoundError: When mmcvt was installed without its configs.
    """
    if not CONFIG_DIR.is_dir():
        raise FileNotFoundError(
            f'{CONFIG_DIR} is missing: this mmcvt was installed without its '
            f'configs. Reinstall it: `pip install mmcvt-*.whl`, or '
            f'`pip install -e .` (`make install`) in a checkout')
    return sorted(
        path.relative_to(CONFIG_DIR).as_posix()
        for path in CONFIG_DIR.rglob('*.py')
        # the parts that configs inherit, not configs to run
        if '_base_' not in path.relative_to(CONFIG_DIR).parts)


def main(argv=None):
    """Prints the absolute paths of the named configs, or of all of them."""
    names = sys.argv[1:] if argv is None else argv
    for name in names or packaged_configs():
        print(config_path(name))


if __name__ == '__main__':
    main()
