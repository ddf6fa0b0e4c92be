# Sourced by the shell scripts in tools/: sets PYTHON, the interpreter they
# run. A PYTHON set by the caller wins; otherwise this checkout's .venv (what
# `make install` made), so that the scripts work without activating it;
# otherwise `python` from PATH.
if [ -z "${PYTHON:-}" ]; then
    PYTHON="$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python"
    [ -x "$PYTHON" ] || PYTHON=python
fi
