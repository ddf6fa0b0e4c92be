"""The README and the guides in docs/ stay true to the repository: links
and images resolve, commands run tools that exist with options that they
take, and the files and configs named exist. The checks themselves
(tests/docs_check.py) are shown to fail on small examples."""
import re
import textwrap
from pathlib import Path

import pytest

from . import docs_check
from .utils import REPO, load_tool

README_MAX_LINES = 250


def of_the_docs(check):
    """What ``check`` finds in README.md and docs/."""
    return [
        found for document in docs_check.documents(REPO)
        for found in check(document, REPO)
    ]


def test_every_relative_link_and_image_of_the_docs_resolves():
    problems = of_the_docs(docs_check.link_problems)
    assert not problems, '\n'.join(problems)


def test_every_command_of_the_docs_runs_a_tool_that_exists_with_options_it_lists(  # noqa: E501
):
    found = of_the_docs(docs_check.commands)
    # a check that finds no command would pass whatever the docs say
    tools = {command.tool for command in found}
    assert {'tools/train.py', 'tools/dist_train.sh',
            'mmcvt/doctor.py'} <= tools
    problems = docs_check.command_problems(found, REPO)
    assert not problems, '\n'.join(problems)


def test_every_file_and_config_that_the_docs_name_exists():
    problems = of_the_docs(docs_check.path_problems)
    assert not problems, '\n'.join(problems)


def test_the_readme_is_a_landing_page_of_at_most_250_lines():
    lines = (REPO / 'README.md').read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f'README.md has {len(lines)} lines: move the details into a guide '
        f'in docs/en/ and link to it')


def test_the_readme_model_zoo_has_a_row_for_every_shipped_config():
    readme = (REPO / 'README.md').read_text()
    rows = set(re.findall(r'^\| `([^`]+\.py)` \|', readme, re.MULTILINE))
    configs = REPO / 'configs'
    shipped = {
        str(config.relative_to(configs))
        for config in configs.rglob('*.py') if '_base_' not in config.parts
    }
    assert shipped - rows == set()


def write(root, name, text):
    path = Path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def fake_helps(options):
    """A stand-in for collect_helps: every tool's --help lists
    ``options``."""
    return lambda tools, root: {tool: ' '.join(options) for tool in tools}


def commands_of(tmp_path, markdown):
    return docs_check.commands(
        write(tmp_path, 'README.md', markdown), tmp_path)


def test_a_link_to_a_missing_file_is_a_problem(tmp_path):
    write(tmp_path, 'docs/en/here.md', '# Here\n')
    readme = write(
        tmp_path, 'README.md', """\
        [a guide](docs/en/here.md), [another](docs/en/gone.md)
        """)
    problems = docs_check.link_problems(readme, tmp_path)
    assert len(problems) == 1
    assert 'docs/en/gone.md: no such file' in problems[0]


def test_a_missing_image_is_a_problem(tmp_path):
    guide = write(tmp_path, 'docs/en/guide.md',
                  '![a picture](../images/gone.png)\n')
    assert docs_check.link_problems(guide, tmp_path) == [
        'docs/en/guide.md:1: image ../images/gone.png: no such file'
    ]


def test_a_link_resolves_to_a_heading_by_githubs_anchor(tmp_path):
    write(
        tmp_path, 'docs/en/guide.md', """\
        # Guide
        ## Resolution sweep: `tools/x.py`
        ## Inheriting mmcvt's configs
        ## Notes
        ## Notes
        """)
    readme = write(
        tmp_path, 'README.md', """\
        [a](docs/en/guide.md#resolution-sweep-toolsxpy)
        [b](docs/en/guide.md#inheriting-mmcvts-configs)
        [c](docs/en/guide.md#notes-1)
        [d](#top)
        """)
    assert docs_check.link_problems(readme, tmp_path) == [
        'README.md:1: link #top: no heading of README.md has the anchor #top'
    ]


def test_a_link_to_a_missing_anchor_is_a_problem(tmp_path):
    write(tmp_path, 'docs/en/guide.md', '# Guide\n## Install\n')
    readme = write(tmp_path, 'README.md',
                   'see [install](docs/en/guide.md#installing)\n')
    assert docs_check.link_problems(readme, tmp_path) == [
        'README.md:1: link docs/en/guide.md#installing: no heading of '
        'guide.md has the anchor #installing'
    ]


def test_a_command_that_runs_a_missing_tool_is_a_problem(tmp_path):
    write(tmp_path, 'tools/train.py', '')
    found = commands_of(
        tmp_path, """\
        ```bash
        python tools/train.py CONFIG
        python tools/trian.py CONFIG
        ```
        and `python -m mmcvt.docter`
        """)
    assert docs_check.command_problems(found, tmp_path, fake_helps([])) == [
        'README.md:3: `python tools/trian.py CONFIG` runs tools/trian.py, '
        'which does not exist',
        'README.md:5: `python -m mmcvt.docter` runs mmcvt/docter.py, which '
        'does not exist'
    ]


def test_an_option_that_the_tools_help_does_not_list_is_a_problem(tmp_path):
    write(tmp_path, 'tools/test.py', '')
    found = commands_of(
        tmp_path, """\
        `python tools/test.py CONFIG CKPT --tta --work-dir=out --show-dri x`
        """)
    problems = docs_check.command_problems(
        found, tmp_path, fake_helps(['--tta', '--work-dir', '--show-dir']))
    assert problems == [
        'README.md:1: `python tools/test.py CONFIG CKPT --tta '
        '--work-dir=out --show-dri x` uses --show-dri, which '
        '`tools/test.py --help` does not list'
    ]


def test_the_options_of_a_sh_script_are_those_of_the_tool_it_runs(tmp_path):
    write(tmp_path, 'tools/train.py', '')
    write(tmp_path, 'tools/dist_train.sh',
          '"$PYTHON" "$(dirname "$0")/train.py" "$CONFIG" "${@:3}"\n')
    write(tmp_path, 'tools/setup.sh', 'echo "$1"\n')
    found = commands_of(
        tmp_path, """\
        ```bash
        tools/dist_train.sh CONFIG 8 --amp --resme
        tools/setup.sh --fast
        ```
        """)
    asked = []

    def helps(tools, root):
        asked.append(tools)
        return {tool: '--amp --resume' for tool in tools}

    assert docs_check.command_problems(found, tmp_path, helps) == [
        'README.md:2: `tools/dist_train.sh CONFIG 8 --amp --resme` uses '
        '--resme, which `tools/train.py --help` does not list',
        'README.md:3: `tools/setup.sh --fast` gives tools/setup.sh options, '
        'which it passes on to no Python tool'
    ]
    assert asked == [['tools/train.py']]


def test_a_shell_blocks_variables_are_expanded_in_its_commands(tmp_path):
    write(tmp_path, 'tools/bench.py', '')
    found = commands_of(
        tmp_path, """\
        ```bash
        T=".venv/bin/python tools/bench.py --amp"
        $T CONFIG --shape 800 1333 \\
            --batch 2
        ```
        """)
    expected = ('tools/bench.py', ('--amp', '--shape', '--batch'))
    assert [(command.tool, command.options) for command in found] == [expected]


def test_a_script_fed_to_python_is_not_read_as_commands(tmp_path):
    found = commands_of(
        tmp_path, """\
        ```bash
        .venv/bin/python - <<'PY'
        import os
        os.system('python tools/gone.py --flag')
        PY
        python tools/after.py --flag  # after the script
        ```
        """)
    assert [(command.tool, command.options)
            for command in found] == [('tools/after.py', ('--flag', ))]


def test_the_tools_help_is_collected_in_one_process_as_they_print_it(tmp_path):
    parser_script = """\
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument('config')
        parser.add_argument('{option}', action='store_true')
        if __name__ == '__main__':
            parser.parse_args()
            raise SystemExit('ran past --help')
        """
    write(tmp_path, 'tools/a.py', parser_script.format(option='--alpha'))
    write(tmp_path, 'mmcvt/__init__.py', '')
    write(tmp_path, 'mmcvt/b.py', parser_script.format(option='--beta'))
    found = commands_of(
        tmp_path, """\
        ```bash
        python tools/a.py CONFIG --alpha
        python -m mmcvt.b CONFIG --beta --gamma
        ```
        """)
    assert docs_check.command_problems(found, tmp_path) == [
        'README.md:3: `python -m mmcvt.b CONFIG --beta --gamma` uses '
        '--gamma, which `mmcvt/b.py --help` does not list'
    ]


# code naming files and configs that the example repository has
EXISTING = [
    'configs/retinanet_cvt13_coco.py',
    'retinanet_cvt13_coco.py',
    'demo/upernet_cvt13_shapes.py',
    'upernet_cvt13_shapes.py',
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
    # where an install puts the configs, and a pattern: no files to check
    '/site-packages/mmcvt/.mim/configs/retinanet_cvt13_coco.py',
    'tools/dist_*.sh',
]
# code naming what it lacks, and the problem found
MISSING = {
    'configs/retinanet_cvt99_coco.py':
    'configs/retinanet_cvt99_coco.py does not exist',
    'retinanet_cvt99_coco.py':
    'config retinanet_cvt99_coco.py is in neither configs/ nor its '
    'subfolders',
    'mmdet::dino/dino-4scale_r99_coco.py':
    'mmdet::dino/dino-4scale_r99_coco.py: no such config in the installed '
    'mmdet',
    'tests/test_x.py::test_y':
    'tests/test_x.py does not exist',
}


def path_problems_of(tmp_path, code):
    write(tmp_path, 'configs/retinanet_cvt13_coco.py', '')
    write(tmp_path, 'configs/demo/upernet_cvt13_shapes.py', '')
    readme = write(tmp_path, 'README.md', f'text\n\n```python\n{code}\n```\n')
    return docs_check.path_problems(readme, tmp_path)


@pytest.mark.parametrize('code', EXISTING)
def test_a_config_or_file_named_in_code_that_exists_is_no_problem(
        tmp_path, code):
    assert path_problems_of(tmp_path, code) == []


@pytest.mark.parametrize('code, problem', MISSING.items())
def test_a_config_or_file_named_in_code_that_is_missing_is_a_problem(
        tmp_path, code, problem):
    assert path_problems_of(tmp_path, code) == [f'README.md:3: {problem}']


def run_docs_figures(tmp_path, old, new):
    """tools/misc/docs_figures.py on an old and a new document: its exit
    status and what it printed."""
    old_file = write(tmp_path, 'old/README.md', old)
    new_file = write(tmp_path, 'new/README.md', new)
    return load_tool('misc/docs_figures.py').main(
        [str(old_file), '--new', str(new_file)])


def test_docs_figures_finds_a_figure_or_a_command_that_a_move_lost(
        tmp_path, capsys):
    old = """\
        `make demo` took 11 min 14 s on 2 cores.

        | config | params |
        |---|---|
        | `a.py` | 40.57 M |

        ```bash
        python tools/train.py CONFIG --amp
        ```
        """
    new = """\
        `make demo` took 11 min 41 s on 2 cores.

        | config | params |
        |---|---|
        | `a.py` | 40.75 M |
        """
    assert run_docs_figures(tmp_path, old, new) == 1
    lost = capsys.readouterr().out.splitlines()
    assert [line.split(': ', 1)[1] for line in lost[:-1]] == [
        'figure not found: min 14 s', 'figure not found: | 40.57 M',
        'command not found: python tools/train.py CONFIG --amp'
    ]


def test_docs_figures_finds_every_figure_of_text_moved_and_rewrapped(
        tmp_path, capsys):
    old = """\
        ## Quick start

        `make demo` took 11 min 14 s on 2 cores.

        | config | params |
        |---|---|
        | `a.py` | 40.57 M |
        """
    new = """\
        # Getting started

        | config | params |
        |---|---|
        | `a.py` | 40.57 M |

        ## Quick start

        `make demo` took 11 min
        14 s on 2 cores.
        """
    assert run_docs_figures(tmp_path, old, new) == 0
    assert capsys.readouterr().out.endswith(
        '4 of 4 figures and command lines found\n')
