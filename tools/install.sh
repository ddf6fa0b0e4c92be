#!/usr/bin/env bash
# Installs mmcvt and everything it needs into the virtual environment .venv of
# this checkout. Idempotent: a second run only checks what is already there.
# Versions and the reasons for them live in requirements/*.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log() { printf '[install] %s\n' "$*"; }

if [ ! -x "$PY" ]; then
    log "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
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
    grep -v '^\s*#' requirements/build.txt | grep -v '^\s*$'
} > "$constraints"
"${PIP[@]}" install -q -c "$constraints" -r requirements/build.txt

mmcv_status() {
    # prints: ok | no-ops | wrong-version <v> | missing
    "$PY" - <<'EOF'
import importlib.util
if importlib.util.find_spec('mmcv') is None:
    print('missing')
else:
    import mmcv
    if mmcv.__version__ != '2.1.0':
        print('wrong-version', mmcv.__version__)
    else:
        try:
            import mmcv._ext  # noqa: F401  the compiled ops
            print('ok')
        except Exception as e:  # ImportError, or an undefined symbol from a
            print('no-ops')     # build against another torch
EOF
}

build_mmcv() {
    log "building mmcv 2.1.0 with its compiled ops (about 6 minutes on 2 cores;" \
        "pip caches the wheel for later installs)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" install \
        --no-build-isolation -c "$constraints" "$@" -r requirements/mmcv.txt
}

rebuild_mmcv() { build_mmcv --force-reinstall --no-deps --no-cache-dir; }

status=$(mmcv_status)
case "$status" in
    ok) log "keeping mmcv 2.1.0 with ops" ;;
    missing | wrong-version*) build_mmcv ;;
    *) log "found mmcv 2.1.0 without usable ops ($status): rebuilding it"; rebuild_mmcv ;;
esac
status=$(mmcv_status)
if [ "$status" != ok ]; then
    # pip's wheel cache may hold a build without ops or against another torch
    log "the installed mmcv is unusable ($status): rebuilding without pip's cache"
    rebuild_mmcv
    status=$(mmcv_status)
    [ "$status" = ok ] || { log "mmcv is still unusable ($status)"; exit 1; }
fi

log "installing mmcvt and its runtime, test, ONNX export and lint dependencies"
"${PIP[@]}" install -q -c "$constraints" -e '.[tests,onnx,lint]'

"$PY" -c 'import mmcvt, mmdet, mmseg, mmcv.ops; print("[install] ok: mmcvt", mmcvt.__version__)'
