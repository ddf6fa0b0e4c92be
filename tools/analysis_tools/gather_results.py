"""Gathers finished runs into the README's COCO and ADE20K tables and a
model-zoo metafile in OpenMMLab's format.

    python tools/analysis_tools/gather_results.py work_dirs/* --out-dir results

Each WORK_DIR is the work dir of a config's tools/train.py and tools/test.py
runs (the same dir for both, as when test.py is given train's work dir or
none). The tool reads what mmengine's Runner wrote there, and nothing else:

- ``<config>.py``, the config's name (Runner.dump_config);
- ``<timestamp>/vis_data/config.py``, the config of each run;
- a test run's metrics, ``<timestamp>/<timestamp>.json``: the latest run
  without ``--tta`` gives box AP, mask AP or mIoU, the latest with ``--tta``
  the mIoU (ms+flip); the checkpoint it tested is its ``load_from``;
- a training run's ``<timestamp>/vis_data/scalars.json``: its ``memory``
  values (MB per GPU, peak since the last log line; the Runner logs them
  only on a GPU), of which the table gives the peak over all training runs,
  and the latest training run's ``<timestamp>/<timestamp>.log``.

Params and FLOPs are counted from the config as tools/analysis_tools/
get_flops.py counts them, unless ``--skip-flops``. mmdet configs go to the
COCO table, mmseg configs to the ADE20K table. What a work dir does not
hold is "not measured" in the tables and absent from the metafile; a
directory with no run in it is skipped with a message that says why.

After a killed run: a test run whose metrics file is cut short or holds no
metrics is passed over, with a warning, for the latest complete one; the
last line of a scalars.json cut off mid-line is skipped with a warning. A
metric that is no finite number (NaN, a string) is flagged in its cell and
left out of the metafile. Every error names the file it is about.

A latest training run that mmcvt's StopOnNonFiniteLossHook stopped is
marked as stopped, where and why, in its row and in its metafile entry
(``Metadata: Training``), which then names as ``Weights`` only a checkpoint
that a test run tested, not the last one saved before the stop. Work dirs
of the same config are told apart by their paths, in the rows and in the
metafile's entry names, which stay unique.

It writes ``results.md`` (the tables) and ``metafile.yml`` into --out-dir.
"""
import argparse
import collections
import copy
import functools
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import yaml
from mmengine.config import Config

from mmcvt.utils.output_paths import output_dir

REPO = Path(__file__).resolve().parents[2]
# how the Runner names a run's directory: its start time
TIMESTAMP = re.compile(r'\d{8}_\d{6}')
NOT_MEASURED = 'not measured'
NOT_APPLICABLE = 'n/a'  # mask AP of a detector without masks
COLLECTION = dict(
    Name='CvT',
    Metadata=dict(Architecture=['CvT']),
    Paper=dict(
        URL='https://arxiv.org/abs/2103.15808',
        Title='CvT: Introducing Convolutions to Vision Transformers'),
    README='README.md')
# the names the model zoos give the data sets of these dataset types
DATASET_NAMES = {'CocoDataset': 'COCO', 'ADE20KDataset': 'ADE20K'}
# the line that mmcvt.engine.StopOnNonFiniteLossHook logs as it stops a run
# (tests/test_gather_results.py has the hook write it); under AMP it warns
# of skipped steps with another
STOPPED = re.compile(r'non-finite loss at (iteration \d+ \(epoch [^)]*\)): '
                     r'[^\n]*Training stopped')


class NotARun(Exception):
    """A directory that holds no run of tools/train.py or tools/test.py."""


def warn(message):
    print(f'warning: {message}', file=sys.stderr)


def read_json(path):
    """A JSON file, or an error that names it."""
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f'{path} is not valid JSON: {error}') from None


def read_json_lines(path):
    """The records of a file of one JSON object per line, as the Runner's
    LocalVisBackend appends them. A run killed while writing leaves its last
    line cut off: that one is skipped with a warning; a bad line before the
    last is an error naming the file and the line."""
    lines = [
        (number, line)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip()
    ]
    records = []
    for number, line in lines:
        try:
            records.append(json.loads(line))
        except ValueError as error:
            if number != lines[-1][0]:
                raise ValueError(f'{path}, line {number}, is not valid JSON: '
                                 f'{error}') from None
            warn(f'{path}: the last line, {number}, is cut off (a run '
                 f'killed while writing it?); skipped')
    return records


class WorkDir:
    """The runs of one config in a work dir, as the Runner left them."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotARun(f'{self.path} is not a directory')
        self.train_runs, self.test_runs = [], []
        left_out = []
        for run in sorted(p for p in self.path.iterdir()
                          if TIMESTAMP.fullmatch(p.name)):
            if not (run / 'vis_data' / 'config.py').is_file():
                left_out.append(f'{run}: no vis_data/config.py (a run '
                                f'without mmengine\'s LocalVisBackend?)')
            elif (run / 'vis_data' / 'scalars.json').is_file():
                self.train_runs.append(run)
            elif (run / f'{run.name}.json').is_file():
                self.test_runs.append(run)
            else:
                left_out.append(f'{run}: neither training scalars nor test '
                                f'metrics (a run that stopped early?)')
        for reason in left_out:
            print(f'left out: {reason}', file=sys.stderr)
        if not self.train_runs + self.test_runs:
            raise NotARun(
                f'{self.path} holds no finished run of tools/train.py or '
                f'tools/test.py: ' + ('; '.join(left_out) if left_out else
                                      'no <timestamp>/ directory of one'))
        dumped = [
            p.stem for p in self.path.glob('*.py')
            if not TIMESTAMP.fullmatch(p.stem)
        ]
        if len(dumped) != 1:
            raise NotARun(f'{self.path}: expected the one config that the '
                          f'Runner dumps into a work dir, found {dumped}')
        self.name = dumped[0]
        # the model as trained, or else as last tested
        self.cfg = self.run_config((self.train_runs or self.test_runs)[-1])
        if self.cfg.model.type.endswith('TTAModel'):
            # tools/test.py --tta wraps the model: the model is inside
            self.cfg.model = self.cfg.model.module

    @staticmethod
    def run_config(run):
        path = run / 'vis_data' / 'config.py'
        try:
            return Config.fromfile(path, import_custom_modules=False)
        except Exception as error:
            raise ValueError(f'{path} cannot be read as a config: '
                             f'{error}') from None

    @property
    def config_path(self):
        """The config's path in this repository, or its file name."""
        found = sorted((REPO / 'configs').rglob(f'{self.name}.py'))
        return (found[0].relative_to(REPO).as_posix()
                if found else f'{self.name}.py')

    @property
    def scope(self):
        return self.cfg.get('default_scope')

    @functools.cache
    def latest_test(self, tta):
        """Metrics, config and metrics file of the latest complete test run
        with or without TTA; a run whose metrics file is empty or cut short
        (killed, or an evaluation that gave nothing) is passed over with a
        warning."""
        for run in reversed(self.test_runs):
            cfg = self.run_config(run)
            if cfg.model.type.endswith('TTAModel') != tta:
                continue
            path = run / f'{run.name}.json'
            try:
                metrics = read_json(path)
            except ValueError as error:
                warn(f'{error}; an earlier test run counts')
                continue
            if not isinstance(metrics, dict) or not metrics:
                warn(f'{path} holds no metrics ({metrics!r}); an earlier '
                     f'test run counts')
                continue
            return metrics, cfg, path
        return None, None, None

    @property
    def peak_memory_mb(self):
        memory = [
            line['memory'] for run in self.train_runs
            for line in read_json_lines(run / 'vis_data' / 'scalars.json')
            if 'memory' in line
        ]
        return max(memory) if memory else None

    @property
    def training_log(self):
        if not self.train_runs:
            return None
        run = self.train_runs[-1]
        return run / f'{run.name}.log'

    @functools.cached_property
    def stopped(self):
        """Where the non-finite-loss guard stopped the latest training run
        (``'iteration 6 (epoch 2)'``), or None."""
        log = self.training_log
        if log is None or not log.is_file():
            return None
        found = STOPPED.search(log.read_text(errors='replace'))
        return found[1] if found else None

    @property
    def weights(self):
        """The checkpoint tested, or else the last one saved, unless
        training stopped: that one is from before the stop, and no test
        tested it."""
        _, cfg, _ = self.latest_test(tta=False)
        if cfg is not None and cfg.get('load_from'):
            return cfg.load_from
        last = self.path / 'last_checkpoint'
        if self.stopped or not last.is_file():
            return None
        return last.read_text().strip()

    @property
    def dataset(self):
        dataset = self.cfg.test_dataloader.dataset
        if dataset.get('metainfo', {}).get('classes'):
            # a config that names its own classes: its own data, in a
            # stock format; named by the folder it is in
            return Path(dataset.data_root).name
        return DATASET_NAMES.get(dataset.type, dataset.type)

    @property
    def schedule(self):
        train_cfg = self.cfg.train_cfg
        if 'max_epochs' in train_cfg:
            return {'Epochs': train_cfg.max_epochs}
        return {'Iterations': train_cfg.max_iters}


# ---- the metrics of each table ----------------------------------------------
class Invalid:
    """A metric that a test run reported but that is no number to tabulate
    (NaN, a string): its cell says so, and the metafile leaves it out."""

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return f'invalid: {str(self.value)[:20]!r}'


def reported(test, key, scale=1., digits=1):
    """A test run's metric (``test``: what WorkDir.latest_test returns) as
    the model zoos round it; None where the run, or the metric in it, is
    missing, and :class:`Invalid` with a warning where it is no finite
    number."""
    metrics, _, path = test
    if metrics is None or key not in metrics:
        return None
    value = metrics[key]
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value)):
        warn(f'{path}: {key} is {value!r}, not a number: flagged in the '
             f'table, left out of the metafile')
        return Invalid(value)
    return round(value * scale, digits)


def coco_metrics(work_dir):
    """{(task, metric): AP in %, as the model zoo's columns}."""
    test = work_dir.latest_test(tta=False)
    evaluated = work_dir.cfg.test_evaluator.get('metric', 'bbox')
    return {
        ('Object Detection', 'box AP'):
        reported(test, 'coco/bbox_mAP', scale=100),
        ('Instance Segmentation', 'mask AP'):
        (reported(test, 'coco/segm_mAP', scale=100)
         if 'segm' in evaluated else NOT_APPLICABLE),
    }


def ade_metrics(work_dir):
    """{(task, metric): mIoU in %, which mmseg reports in %}."""
    task = 'Semantic Segmentation'
    return {
        (task, 'mIoU'):
        reported(work_dir.latest_test(tta=False), 'mIoU', digits=2),
        (task, 'mIoU(ms+flip)'):
        reported(work_dir.latest_test(tta=True), 'mIoU', digits=2),
    }


TABLES = {
    'mmdet':
    dict(
        title='COCO (MMDetection configs)',
        metrics=coco_metrics,
        header=[
            'config', 'box AP', 'mask AP', 'params', 'FLOPs', 'train memory',
            'log'
        ]),
    'mmseg':
    dict(
        title='ADE20K (MMSegmentation configs)',
        metrics=ade_metrics,
        header=[
            'config', 'mIoU (single scale)', 'mIoU (ms+flip)', 'params',
            'FLOPs', 'train memory'
        ]),
}


def load_get_flops():
    """tools/analysis_tools/get_flops.py, a script beside this one."""
    spec = importlib.util.spec_from_file_location(
        'get_flops',
        Path(__file__).with_name('get_flops.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gather(work_dir, count_complexity, where=''):
    """One model: its table row's cells and its metafile entry, named by
    its config and ``where`` (see :func:`where_from`)."""
    table = TABLES[work_dir.scope]
    metrics = table['metrics'](work_dir)
    # a copy: counting builds the model without its pretrained weights
    complexity = (
        count_complexity(copy.deepcopy(work_dir.cfg))
        if count_complexity else None)
    memory = work_dir.peak_memory_mb

    metadata = dict(work_dir.schedule)
    if work_dir.stopped:
        metadata['Training'] = (f'stopped by a non-finite loss at '
                                f'{work_dir.stopped}')
    if memory is not None:
        metadata['Training Memory (GB)'] = round(memory / 1024, 1)
    if complexity:
        metadata['Parameters'] = complexity['params']
        metadata['FLOPs'] = int(complexity['macs'])  # multiply-adds
    model = {
        'Name':
        work_dir.name + where,
        'In Collection':
        COLLECTION['Name'],
        'Config':
        work_dir.config_path,
        'Metadata':
        metadata,
        'Results': [
            dict(Task=task, Dataset=work_dir.dataset, Metrics={metric: value})
            for (task, metric), value in metrics.items()
            if isinstance(value, (int, float))
        ],
    }
    if work_dir.weights:
        model['Weights'] = work_dir.weights

    def cell(value, form='{}'):
        return NOT_MEASURED if value is None else form.format(value)

    row = [f'`{work_dir.name}.py`{where}']
    if work_dir.stopped:
        row[0] += f', training stopped at {work_dir.stopped}: non-finite loss'

    row += [cell(value) for value in metrics.values()]
    row += [
        cell(complexity and complexity['params'] / 1e6, '{:.2f} M'),
        cell(complexity and complexity['macs'] / 1e9, '{:.1f} G'),
        cell(memory and memory / 1024, '{:.1f} GB'),
    ]
    if 'log' in table['header']:
        row.append(cell(work_dir.training_log, '`{}`'))
    return row, model


def markdown_table(header, rows):
    lines = [header, ['---'] * len(header), *rows]
    return '\n'.join('| ' + ' | '.join(map(str, line)) + ' |'
                     for line in lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 2)[2])
    parser.add_argument('work_dirs', nargs='+', help='work dirs of runs')
    parser.add_argument(
        '--out-dir',
        default='.',
        type=output_dir,
        help='where to write results.md and metafile.yml')
    parser.add_argument(
        '--skip-flops',
        action='store_true',
        help='do not count params and FLOPs (which builds each model)')
    return parser.parse_args(argv)


def read_work_dirs(paths):
    """The work dirs of runs among ``paths``, each once, in their order;
    the others are skipped with a message that says why."""
    work_dirs, seen = [], set()
    for path in paths:
        if Path(path).resolve() in seen:
            print(f'skipped: {path}, given twice', file=sys.stderr)
            continue
        seen.add(Path(path).resolve())
        try:
            work_dir = WorkDir(path)
        except NotARun as e:
            print(f'skipped: {e}', file=sys.stderr)
            continue
        if work_dir.scope not in TABLES:
            print(
                f'skipped: {path}: default_scope {work_dir.scope!r} is '
                f'neither of {list(TABLES)}',
                file=sys.stderr)
            continue
        work_dirs.append(work_dir)
    return work_dirs


def where_from(work_dirs):
    """What tells apart the rows and metafile entries of work dirs of one
    config, which would share its name: their paths, `` [PATH]``; nothing
    for a config of one work dir."""
    counts = collections.Counter(work_dir.name for work_dir in work_dirs)
    return [
        f' [{work_dir.path}]' if counts[work_dir.name] > 1 else ''
        for work_dir in work_dirs
    ]


def main(argv=None):
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    count_complexity = (None
                        if args.skip_flops else load_get_flops().complexity)
    rows = {scope: [] for scope in TABLES}
    models = []
    work_dirs = read_work_dirs(args.work_dirs)
    for work_dir, where in zip(work_dirs, where_from(work_dirs)):
        row, model = gather(work_dir, count_complexity, where)
        rows[work_dir.scope].append(row)
        models.append(model)
    if not models:
        raise SystemExit('no run found in ' + ', '.join(args.work_dirs))

    tables = '\n\n'.join(
        f'{TABLES[scope]["title"]}\n\n'
        f'{markdown_table(TABLES[scope]["header"], scope_rows)}'
        for scope, scope_rows in rows.items() if scope_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'results.md').write_text(tables + '\n')
    with open(out_dir / 'metafile.yml', 'w') as f:
        yaml.safe_dump(
            dict(Collections=[COLLECTION], Models=models), f, sort_keys=False)
    print(tables)
    print(f'\nwrote {out_dir / "results.md"} and {out_dir / "metafile.yml"}')
    return tables, models


if __name__ == '__main__':
    main()
