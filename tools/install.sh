#!/usr/bin/env bash
# Installs mmcvt and everything it needs into a virtual environment of this
# checkout, on one of two stacks of OpenMMLab libraries (`make install
# [STACK=onedl]` runs it):
#   STACK=upstream (the default): mmcv, mmengine, mmdet, mmsegmentation, on
#     numpy 1, into .venv;
#   STACK=onedl: their maintained continuation onedl-mmcv, onedl-mmengine,
#     onedl-mmdetection, onedl-mmsegmentation, on numpy 2, into .venv-onedl.
# Both install the same modules (mmcv, mmengine, mmdet, mmseg), so each stack
# has an environment of its own. Idempotent: a second run only checks what is
# already there. Versions and the reasons for them live in
# requirements/*.txt (both stacks) and requirements/$STACK/*.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '[install] %s\n' "$*"; }

STACK=${STACK:-upstream}
STACK_REQUIREMENTS="requirements/$STACK"
if [ ! -f "$STACK_REQUIREMENTS/mmcv.txt" ]; then
    stacks=$(cd requirements && ls -d -- */ | tr -d / | tr '\n' ' ')
    log "unknown STACK=$STACK: the stacks are ${stacks% } (requirements/<stack>/)"
    exit 2
fi
if [ "$STACK" = upstream ]; then default_venv=.venv; else default_venv=".venv-$STACK"; fi
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$default_venv}
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# the requirement lines of requirements files, without comments
requirement_lines() { grep -hv '^\s*#' "$@" | grep -v '^\s*$'; }

if [ ! -x "$PY" ]; then
    log "creating $VENV with $($PYTHON --version) for the $STACK stack"
    "$PYTHON" -m venv "$VENV"
fi

# The other stacks' distributions install the same modules as this one's:
# installing over them would leave files of both. Stop instead.
foreign=$("$PY" tools/misc/other_stack_distributions.py "$STACK" \
    requirements/*/mmcv.txt requirements/*/openmmlab.txt)
if [ -n "$foreign" ]; then
    log "$VENV holds $foreign, of another stack than $STACK, which" \
        "install the same modules: install into another VENV, or remove" \
        "them first: $PY -m pip uninstall -y $foreign"
    exit 1
fi

# torch first: keep the one already in the environment (a GPU user's CUDA
# build), otherwise take the pinned release.
if "$PY" -c 'import torch' 2>/dev/null; then
    torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
    # the floor that `import mmcvt` checks (mmcvt/version.py)
    problem=$("$PY" -c "exec(open('mmcvt/version.py').read())
print(torch_version_problem('$torch_version') or '')")
    if [ -n "$problem" ]; then
        log "$problem"
        exit 1
    fi
    log "keeping torch $torch_version"
else
    log "installing torch from requirements/torch.txt"
    "${PIP[@]}" install -r requirements/torch.txt
fi

# Nothing below may replace that torch, nor move the build pins.
constraints="$VENV/constraints.txt"
{
    echo "torch==$("$PY" -c 'import torch; print(torch.__version__)')"
    requirement_lines requirements/build.txt
} > "$constraints"
"${PIP[@]}" install -q -c "$constraints" -r requirements/build.txt

# the stack's mmcv distribution and version, e.g. onedl-mmcv==2.3.6
mmcv_requirement=$(requirement_lines "$STACK_REQUIREMENTS/mmcv.txt" | head -n 1)
mmcv_name=${mmcv_requirement%%==*}
mmcv_version=${mmcv_requirement##*==}

mmcv_status() {
    # prints: ok | no-ops | wrong-version <v> | missing
    "$PY" - "$mmcv_name" "$mmcv_version" <<'EOF'
import importlib.util
import sys
from importlib import metadata

name, version = sys.argv[1:]
if importlib.util.find_spec('mmcv') is None:
    print('missing')
else:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        installed = 'none'
    if installed != version:
        print('wrong-version', installed)
    else:
        try:
            import mmcv._ext  # noqa: F401  the compiled ops
            print('ok')
        except Exception:  # ImportError, or an undefined symbol from a
            print('no-ops')  # build against another torch
EOF
}

build_mmcv() {
    log "building $mmcv_name $mmcv_version with its compiled ops (20 minutes" \
        "or more on 2 cores, docs/en/get_started.md; pip caches the wheel for" \
        "later installs)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" install \
        --no-build-isolation -c "$constraints" "$@" -r "$STACK_REQUIREMENTS/mmcv.txt"
}

rebuild_mmcv() { build_mmcv --force-reinstall --no-deps --no-cache-dir; }

status=$(mmcv_status)
case "$status" in
    ok) log "keeping $mmcv_name $mmcv_version with ops" ;;
    missing | wrong-version*) build_mmcv ;;
    *) log "found $mmcv_name $mmcv_version without usable ops ($status):" \
           "rebuilding it"; rebuild_mmcv ;;
esac
status=$(mmcv_status)
if [ "$status" != ok ]; then
    # pip's wheel cache may hold a build without ops or against another torch
    log "the installed $mmcv_name is unusable ($status): rebuilding without" \
        "pip's cache"
    rebuild_mmcv
    status=$(mmcv_status)
    [ "$status" = ok ] || { log "$mmcv_name is still unusable ($status)"; exit 1; }
fi

log "installing mmcvt with the $STACK stack (setup.py's extra '$STACK') and" \
    "its test, ONNX export and lint dependencies"
"${PIP[@]}" install -q -c "$constraints" -e ".[$STACK,tests,onnx,lint]"

"$PY" -c 'import mmcvt, mmdet, mmseg, mmcv.ops; print("[install] ok: mmcvt", mmcvt.__version__)'
