"""Checks that moving documentation text lost no figure and no command:
every number of the old documents, with the word on either side of it, and
every line of their shell blocks must appear in the new ones, whitespace
and line breaks aside.

    git show main:README.md > /tmp/README.old.md
    python tools/misc/docs_figures.py /tmp/README.old.md --new README.md docs

It prints what it did not find, with its line in the old document, and
exits 1 if anything is missing.
"""
import argparse
import re
import sys
from pathlib import Path

NUMBER = re.compile(r'\d')
FENCE = re.compile(r'^\s*(```|~~~)\s*(\w*)')
SHELL_FENCES = {'bash', 'sh', 'shell', 'console'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument(
        'old', nargs='+', type=Path, help='the documents before the move')
    parser.add_argument(
        '--new',
        nargs='+',
        type=Path,
        default=[Path('README.md'), Path('docs')],
        help='the documents after it: Markdown files, or folders whose '
        'Markdown files are read (default: README.md docs)')
    args = parser.parse_args(argv)
    for path in [*args.old, *args.new]:
        if not path.exists():
            parser.error(f'{path} does not exist')
    return args


def normalise(text):
    """The text with every run of whitespace made one space."""
    return ' '.join(text.split())


def blocks(text):
    """(line, words) of each block of the text whose words read on: a
    paragraph (over its line breaks), a table row, a heading, the lines of
    code between a fence or a blank line and the next. A figure's words are
    taken within its block, so that text moved away from its neighbours
    keeps its figures."""
    found, words = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(('#', '|', '```', '~~~')):
            found.append(words)
            words = []
        words += [(number, word) for word in line.split()]
        if stripped.startswith(('#', '|', '```', '~~~')):
            found.append(words)
            words = []
    return [block for block in [*found, words] if block]


def figures(text):
    """(line, figure) of each number in the text, a figure being the
    number's word with the words on either side of it in its block (in a
    table, the cell borders), so that a number that lands in another
    sentence or another cell counts as lost."""
    found = []
    for words in blocks(text):
        for i, (line, word) in enumerate(words):
            if NUMBER.search(word):
                window = words[max(i - 1, 0):i + 2]
                found.append((line, ' '.join(word for _, word in window)))
    return found


def shell_lines(text):
    """(line, text) of each non-empty line of the shell blocks."""
    found, shell, fenced = [], False, False
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            shell = not fenced and fence[2] in SHELL_FENCES
            fenced = not fenced
        elif shell and line.strip():
            found.append((number, line.strip()))
    return found


def markdown_files(paths):
    for path in paths:
        yield from sorted(path.rglob('*.md')) if path.is_dir() else [path]


def missing(old_text, new_text):
    """(line, kind, item) of each figure and shell line of the old text
    that the new text lacks."""
    new = normalise(new_text)
    items = [(line, 'figure', item) for line, item in figures(old_text)]
    items += [(line, 'command', item) for line, item in shell_lines(old_text)]
    return [(line, kind, item) for line, kind, item in sorted(items)
            if normalise(item) not in new]


def main(argv=None):
    args = parse_args(argv)
    new_text = '\n'.join(path.read_text() for path in markdown_files(args.new))
    lost = 0
    for old in args.old:
        old_text = old.read_text()
        lacking = missing(old_text, new_text)
        for line, kind, item in lacking:
            print(f'{old}:{line}: {kind} not found: {item}')
        checked = len(figures(old_text)) + len(shell_lines(old_text))
        print(f'{old}: {checked - len(lacking)} of {checked} figures and '
              f'command lines found')
        lost += len(lacking)
    return 1 if lost else 0


if __name__ == '__main__':
    sys.exit(main())
