"""Checks that Markdown documents stay true to the repository they describe:
their relative links and images resolve (anchors too), the commands they
show run tools that exist with options that those tools list, and the
files and configs they name exist.

tests/test_docs.py runs the checks on README.md and docs/, and on small
examples that show each check failing where it must. Every function takes
the repository's root, so that an example can stand in a temporary one.
"""
import functools
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# markdown-it-py comes with rich, which mmengine requires
from markdown_it import MarkdownIt

# CommonMark, as GitHub renders it, with GitHub's tables
MARKDOWN = MarkdownIt('commonmark').enable('table')
SHELL_FENCES = {'bash', 'sh', 'shell', 'console'}
# a link's scheme (https:, mailto:): not a file of the repository
SCHEME = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')
# python, python3, .venv/bin/python, ...
INTERPRETER = re.compile(r'(^|/)python(3(\.\d+)?)?$')
TOOL = re.compile(r'^(\./)?(tools/[\w./-]+\.(py|sh))$')
SHELL_OPERATOR = re.compile(r'^[();<>|&]+$')
ASSIGNMENT = re.compile(r'^(\w+)=(.*)$')
HEREDOC = re.compile(r'<<-?\s*[\'"]?(\w+)[\'"]?')
VARIABLE = re.compile(r'\$(\w+)|\$\{(\w+)\}')
# an option as a command gives it and as --help lists it: --name or -x
OPTION = re.compile(r'(?<![\w-])(--?[A-Za-z][\w-]*)')
# what a .sh tool passes its options on to: "$(dirname "$0")/train.py"
FORWARDED_TOOL = re.compile(r'\$\(dirname "\$0"\)/([\w/.-]+\.py)')
REPO_FOLDERS = ('configs', 'docs', 'mmcvt', 'requirements', 'tests', 'tools')
# a path in the repository: under one of its folders, not the tail of
# another path (/.../site-packages/mmcvt/...), and no pattern (dist_*.sh)
REPO_PATH = re.compile(rf'(?<![\w./~$:-])((?:{"|".join(REPO_FOLDERS)})/'
                       r'[\w./-]*[\w/])(?![*<{\w])')
UPSTREAM_CONFIG = re.compile(r'\b(mmdet|mmseg)::([\w./-]+\.py)\b')
# mmcvt's config files are named <model>_cvt<size>_<data>.py, and named by
# that name alone (mim, mmcvt.config_paths) or by their path in configs/
CONFIG_NAME = re.compile(r'(?<![\w./:-])((?:[\w-]+/)*[\w.-]*_cvt[\w.-]*\.py)'
                         r'\b')
# made by installing mmcvt (setup.py), not part of a checkout
INSTALLED_ONLY = '/.mim'


@dataclass(frozen=True)
class Code:
    """A piece of code in a document: a fenced block or an inline span."""
    file: str  # relative to the root
    line: int  # of the block's opening fence, or the span's paragraph
    text: str
    kind: str  # 'shell' (block), 'inline' or 'other' (a block of another
    # language or of a program's output)


@dataclass(frozen=True)
class Command:
    """A run of one of the repository's tools, as a document shows it."""
    where: str
    text: str
    tool: str  # the file it runs, relative to the repository
    options: tuple


def documents(root):
    """README.md and every Markdown file under docs/."""
    root = Path(root)
    return [root / 'README.md', *sorted((root / 'docs').rglob('*.md'))]


@functools.lru_cache(maxsize=None)
def _tokens(path):
    return MARKDOWN.parse(Path(path).read_text(encoding='utf-8'))


def _line(token):
    """The line that the token's block starts on (1 for the first)."""
    return token.map[0] + 1 if token.map else 0


def _where(path, root, token):
    return f'{Path(path).relative_to(root)}:{_line(token)}'


def code_pieces(path, root):
    """Every fenced block and inline code span of the document."""
    file, pieces = str(Path(path).relative_to(root)), []
    for token in _tokens(path):
        if token.type in ('fence', 'code_block'):
            language = token.info.strip().split(' ')[0]
            kind = 'shell' if language in SHELL_FENCES else 'other'
            pieces.append(Code(file, _line(token), token.content, kind))
        elif token.type == 'inline':
            pieces += [
                Code(file, _line(token), child.content, 'inline')
                for child in token.children if child.type == 'code_inline'
            ]
    return pieces


def slug(text):
    """GitHub's anchor for a heading: lower case, punctuation dropped but
    hyphens and underscores, spaces made hyphens."""
    return re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')


@functools.lru_cache(maxsize=None)
def anchors(path):
    """The anchors of the document's headings, as GitHub makes them: of
    the heading's text (code spans without their backticks), a repeated
    one with -1, -2, ..."""
    tokens = _tokens(path)
    found, counts = set(), {}
    for token, inline in zip(tokens, tokens[1:]):
        if token.type != 'heading_open':
            continue
        base = slug(''.join(
            child.content for child in inline.children
            if child.type in ('text', 'code_inline')))
        count = counts.get(base, 0)
        found.add(f'{base}-{count}' if count else base)
        counts[base] = count + 1
    return frozenset(found)


def link_problems(path, root):
    """Relative links and images of the document that lead nowhere: to a
    missing file, or to an anchor that no heading of the target makes."""
    problems = []
    for token in _tokens(path):
        for child in token.children or ():
            if child.type == 'link_open':
                kind, target = 'link', child.attrs['href']
            elif child.type == 'image':
                kind, target = 'image', child.attrs['src']
            else:
                continue
            if SCHEME.match(target):
                continue
            file, _, anchor = target.partition('#')
            resolved = Path(path).parent / file if file else Path(path)
            where = _where(path, root, token)
            if not resolved.exists():
                problems.append(f'{where}: {kind} {target}: no such file')
            elif (anchor and resolved.suffix == '.md'
                  and anchor not in anchors(resolved.resolve())):
                problems.append(f'{where}: {kind} {target}: no heading of '
                                f'{resolved.name} has the anchor #{anchor}')
    return problems


def split_shell(line):
    """The words of a shell line, with operators (|, &&, (, ...) as words
    of their own and without its comment; plain words where the line is no
    shell (an unclosed quote)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = '#'
    try:
        return list(lexer)
    except ValueError:
        return line.split()


def shell_lines(text):
    """(index of its first line, line) of each command line of a shell
    block: continued lines joined, heredoc bodies (a script fed to python)
    left out, and the variables that the block sets
    (``T=".venv/bin/python tools/x.py"``) expanded in the lines after."""
    lines, variables, heredoc_end = [], {}, None
    physical = text.splitlines()
    index = 0
    while index < len(physical):
        first, line = index, physical[index]
        while line.endswith('\\') and index + 1 < len(physical):
            index += 1
            line = line[:-1] + ' ' + physical[index]
        index += 1
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        line = VARIABLE.sub(lambda m: variables.get(m[1] or m[2], m[0]), line)
        assignment = ASSIGNMENT.match(line.strip())
        value = split_shell(assignment[2]) if assignment else None
        if value is not None and len(value) <= 1:
            variables[assignment[1]] = value[0] if value else ''
            continue
        heredoc = HEREDOC.search(line)
        if heredoc:
            heredoc_end = heredoc[1]
        lines.append((first, line))
    return lines


def _module_file(module, root):
    """The file that ``python -m module`` runs, relative to the root."""
    base = Path(*module.split('.'))
    package_main = base / '__main__.py'
    if (Path(root) / package_main).is_file():
        return str(package_main)
    return str(base.with_suffix('.py'))


def commands_in(words, root):
    """(tool, arguments) of each run of a repository tool among the words
    of a shell line: ``python tools/X.py``, ``tools/X.sh`` or
    ``tools/X.py`` run directly, and ``python -m mmcvt...``."""
    found, i = [], 0
    while i < len(words):
        tool, start = None, i + 1
        if INTERPRETER.search(words[i]):
            j = i + 1
            while (j < len(words) and words[j].startswith('-')
                   and words[j] != '-m'
                   and not SHELL_OPERATOR.match(words[j])):
                j += 1  # options of the interpreter itself
            if j + 1 < len(words) and words[j] == '-m':
                if words[j + 1].split('.')[0] == 'mmcvt':
                    tool = _module_file(words[j + 1], root)
                start = j + 2
            elif j < len(words) and TOOL.match(words[j]):
                tool, start = TOOL.match(words[j])[2], j + 1
        elif TOOL.match(words[i]):
            tool = TOOL.match(words[i])[2]
        if tool is None:
            i += 1
            continue
        end = start
        while end < len(words) and not SHELL_OPERATOR.match(words[end]):
            end += 1
        found.append((tool, words[start:end]))
        i = end
    return found


def commands(path, root):
    """Every run of a repository tool that the document shows, in shell
    blocks and in inline code."""
    found = []
    for piece in code_pieces(path, root):
        if piece.kind == 'other':
            continue
        # a block's lines start on the line after its opening fence
        lines = ([(1 + first, line) for first, line in shell_lines(piece.text)]
                 if piece.kind == 'shell' else [(0, piece.text)])
        for offset, line in lines:
            where = f'{piece.file}:{piece.line + offset}'
            for tool, arguments in commands_in(split_shell(line), root):
                names = (word.split('=')[0] for word in arguments)
                options = tuple(
                    dict.fromkeys(
                        name for name in names if OPTION.fullmatch(name)))
                found.append(Command(where, line.strip(), tool, options))
    return found


def option_source(tool, root):
    """The tool whose ``--help`` lists the options of ``tool``: the tool
    itself, or for a .sh script the Python tool it passes them on to; None
    for a script that passes them to none."""
    if not tool.endswith('.sh'):
        return tool
    forwarded = FORWARDED_TOOL.search((Path(root) / tool).read_text())
    if forwarded is None:
        return None
    return str(Path(tool).parent / forwarded[1])


# Runs each tool (a file, or a module of the package) with --help, as
# `python TOOL --help` and `python -m MODULE --help` do, and writes what
# each printed, by tool, as JSON.
HELP_COLLECTOR = r'''
import io, json, runpy, sys
from contextlib import redirect_stderr, redirect_stdout
out_file, tools = sys.argv[1], sys.argv[2:]
helps = {}
for tool in tools:
    kind, name = tool.split(':', 1)
    text = io.StringIO()
    sys.argv = [name, '--help']
    try:
        with redirect_stdout(text), redirect_stderr(text):
            if kind == 'file':
                runpy.run_path(name, run_name='__main__')
            else:
                runpy.run_module(name, run_name='__main__', alter_sys=True)
    except SystemExit:
        pass
    except Exception as error:
        text.write(f'\n{type(error).__name__}: {error}')
    helps[tool] = text.getvalue()
with open(out_file, 'w') as f:
    json.dump(helps, f)
'''


def _how_to_run(tool):
    """``file:tools/X.py`` for a script, ``module:mmcvt.X`` for a module of
    the package (run with -m, as its relative imports need)."""
    if tool.startswith('tools/'):
        return f'file:{tool}'
    module = '.'.join(Path(tool).with_suffix('').parts)
    return f'module:{module.removesuffix(".__main__")}'


def collect_helps(tools, root):
    """What ``--help`` prints for each tool (a file relative to the root),
    all of them run in one Python process, in the root, so that torch and
    the OpenMMLab libraries are imported once for all."""
    if not tools:
        return {}
    runs = {_how_to_run(tool): tool for tool in tools}
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / 'helps.json'
        result = subprocess.run(
            [sys.executable, '-c', HELP_COLLECTOR,
             str(out_file), *runs],
            cwd=root,
            capture_output=True,
            text=True)
        if result.returncode:
            raise RuntimeError(f'running the tools with --help failed:\n'
                               f'{result.stderr[-2000:]}')
        helps = json.loads(out_file.read_text())
    return {tool: helps[run] for run, tool in runs.items()}


def command_problems(found, root, helps=collect_helps):
    """Commands that run a tool the repository lacks, or give it an option
    that its ``--help`` does not list. ``helps(tools, root)`` gives the
    ``--help`` text of each tool; it is asked once, for the tools whose
    commands use options."""
    problems, sources = [], {}
    for command in found:
        if not (Path(root) / command.tool).is_file():
            problems.append(f'{command.where}: `{command.text}` runs '
                            f'{command.tool}, which does not exist')
        elif command.options:
            sources[command] = option_source(command.tool, root)
    texts = helps(sorted({s for s in sources.values() if s}), root)
    for command, source in sources.items():
        if source is None:
            problems.append(f'{command.where}: `{command.text}` gives '
                            f'{command.tool} options, which it passes on to '
                            f'no Python tool')
            continue
        listed = set(OPTION.findall(texts.get(source, '')))
        unknown = [name for name in command.options if name not in listed]
        if unknown:
            problems.append(
                f'{command.where}: `{command.text}` uses '
                f'{", ".join(unknown)}, which `{source} --help` does not '
                f'list')
    return problems


def _upstream_config(package, config):
    """Where the installed package keeps ``config``, or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0], '.mim', 'configs', config)


def path_problems(path, root):
    """Files that the document's code names and that do not exist: paths
    in the repository (configs/, tools/, mmcvt/, ...), mmcvt's configs by
    name, and MMDetection's and MMSegmentation's configs (``mmdet::...``)
    in the installed libraries."""
    root = Path(root)
    configs = root / 'configs'
    config_names = {config.name for config in configs.rglob('*.py')}
    problems = []
    for piece in code_pieces(path, root):
        where = f'{piece.file}:{piece.line}'
        for match in REPO_PATH.finditer(piece.text):
            name = match[1]
            if INSTALLED_ONLY not in name and not (root / name).exists():
                problems.append(f'{where}: {name} does not exist')
        for match in UPSTREAM_CONFIG.finditer(piece.text):
            file = _upstream_config(match[1], match[2])
            if file is None or not file.is_file():
                problems.append(f'{where}: {match[0]}: no such config '
                                f'in the installed {match[1]}')
        for match in CONFIG_NAME.finditer(piece.text):
            name = match[1]
            if name.split('/')[0] in REPO_FOLDERS:
                continue  # a path in the repository: checked above
            if not ((configs / name).is_file() or name in config_names):
                problems.append(f'{where}: config {name} is in '
                                f'neither configs/ nor its subfolders')
    return problems
