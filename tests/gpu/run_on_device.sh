#!/usr/bin/env bash
# The one-shot GPU check behind `./dev.sh gpu` (tests/gpu/README.md says what it measures).
#
# On the lent GPU machine (/opt/torch/.venv/bin/python3 exists, and nvidia-smi answers or there
# is no .venv): install the carried wheels (.whl/) into /tmp/site, unpack the carried
# redis-server and storescu (.gpu-bin/) into /tmp/gpu-bin, put src/ (the sarclym package) on
# PYTHONPATH and run tests/gpu/gpu_check.py with that python. Nothing else: no
# apt, no venv, no network.
#
# Anywhere else (no GPU): first make or refresh the two carried folders from this checkout's
# .venv and Debian packages, then run the same check on the CPU with .venv/bin/python.
#
# Results: $OUT/gpu_check.txt and $OUT/gpu_check.json when OUT is set, else build/gpu/.
# Arguments go to gpu_check.py (--parts, --budget-s, ...).
#
# Environment, for trying the device path elsewhere:
#   SARCLYM_GPU_MODE=device|cpu     force the path (default: detect)
#   SARCLYM_GPU_PYTHON=...          the interpreter of the device path
#   SARCLYM_GPU_TMP=/tmp            where the device path puts site/ and gpu-bin/
#   SARCLYM_GPU_WHL=.whl            the wheels it installs (another Python's, say)
# and for gpu_check.py: SARCLYM_GPU_FAKE=1 (the CUDA branches on the CPU, figures meaningless),
# SARCLYM_GPU_STORESCU=shim (the benches send with the pynetdicom stand-in).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WHL=${SARCLYM_GPU_WHL:-$ROOT/.whl}
BINS="$ROOT/.gpu-bin"
DEVICE_PY=/opt/torch/.venv/bin/python3
# Runtime dependencies missing from the device image (pyproject.toml's against the device
# notes' package list), and typing-extensions, which pydantic needs newer than an image may
# have. The codecs (pylibjpeg*, pyjpegls) stay behind: synthetic studies are uncompressed.
WHEELS=(annotated-types captum dicomweb-client highdicom huey psycopg psycopg-binary pydantic
        pydantic-core pydicom pynetdicom pyorthanc redis retrying sqlalchemy structlog
        typing-extensions typing-inspection)
# What the throughput and ingest benchmarks run besides Python.
TOOLS=(/usr/bin/redis-server /usr/bin/storescu)

log() { printf '\033[1m[gpu]\033[0m %s\n' "$*" >&2; }

on_device() {
  case "${SARCLYM_GPU_MODE:-}" in
    device) return 0 ;;
    cpu) return 1 ;;
  esac
  [ -x "$DEVICE_PY" ] || return 1
  # nvidia-smi answering; or, should it not, no .venv to fall back on (never set one up there).
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || \
    [ ! -x "$ROOT/.venv/bin/python" ]
}

# -- here: make the carried folders ---------------------------------------------------------------

prepare_wheels() {
  local py=$1 specs
  specs=$("$py" - "${WHEELS[@]}" <<'EOF'
import sys
from importlib.metadata import version

print("\n".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
  if [ -f "$WHL/REQUIREMENTS" ] && [ "$(cat "$WHL/REQUIREMENTS")" = "$specs" ]; then return 0; fi
  log "downloading the carried wheels into .whl/ (cp312, manylinux x86-64)"
  rm -rf "$WHL"
  mkdir -p "$WHL"
  local platforms=() n
  for n in 39 38 37 36 35 34 33 32 31 30 29 28 27 26 25 24 17; do
    platforms+=(--platform "manylinux_2_${n}_x86_64")
  done
  # shellcheck disable=SC2086 # one spec a line
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 \
    -d "$WHL" $specs 2>&1 | grep -v "^WARNING: Location" >&2 || true
  local count
  count=$(find "$WHL" -type f -name '*.whl' | wc -l)
  if [ "$count" != "${#WHEELS[@]}" ]; then
    log "expected ${#WHEELS[@]} wheels in .whl/, got $count"
    return 1
  fi
  echo "$specs" > "$WHL/REQUIREMENTS"
}

prepare_tools() {
  local tool
  for tool in "${TOOLS[@]}"; do
    if [ ! -x "$tool" ]; then
      log "$tool missing (./dev.sh setup installs it): .gpu-bin/ not made"
      return 0
    fi
  done
  local stamp
  stamp=$(sha256sum "$ROOT/tests/gpu/run_on_device.sh" "${TOOLS[@]}" | sha256sum | cut -d' ' -f1)
  if [ -f "$BINS/STAMP" ] && [ "$(cat "$BINS/STAMP")" = "$stamp" ]; then return 0; fi
  log "bundling redis-server and storescu with their libraries into .gpu-bin/tools.tar.xz"
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/bin" "$tmp/libexec" "$tmp/lib" "$tmp/share"
  # redis-server is a link to redis-check-rdb, which picks its mode from argv[0]: keep the name.
  cp -L /usr/bin/redis-server "$tmp/libexec/redis-server"
  cp -L /usr/bin/storescu "$tmp/libexec/storescu"
  cp /usr/share/libdcmtk17/dicom.dic "$tmp/share/dicom.dic"
  # Every library they load except glibc's own and the C++ runtime, which any machine that runs
  # torch has (and Debian's would need this glibc).
  local lib
  for lib in $(ldd "${TOOLS[@]}" | awk '/=> \// {print $3}' | sort -u); do
    case $(basename "$lib") in
      libc.so.*|libm.so.*|libdl.so.*|librt.so.*|libpthread.so.*|libresolv.so.*|ld-linux*) ;;
      libstdc++.so.*|libgcc_s.so.*) ;;
      *) cp -L "$lib" "$tmp/lib/" ;;
    esac
  done
  local name
  for name in redis-server storescu; do
    cat > "$tmp/bin/$name" <<EOF
#!/bin/sh
# Debian 12's $name with its own libraries, for a machine without the package.
here=\$(dirname "\$(readlink -f "\$0")")/..
LD_LIBRARY_PATH="\$here/lib" DCMDICTPATH="\$here/share/dicom.dic" exec "\$here/libexec/$name" "\$@"
EOF
    chmod +x "$tmp/bin/$name"
  done
  rm -rf "$BINS"
  mkdir -p "$BINS"
  tar -cJf "$BINS/tools.tar.xz" -C "$tmp" .
  rm -rf "$tmp"
  echo "$stamp" > "$BINS/STAMP"
}

# -- both: the tools ----------------------------------------------------------------------------

unpack_tools() {
  local py=$1 into=$2
  [ -f "$BINS/tools.tar.xz" ] || { log "no .gpu-bin/tools.tar.xz: tools from PATH"; return 0; }
  rm -rf "$into"
  mkdir -p "$into"
  # Python's tarfile, not tar: the machine may lack xz.
  "$py" - "$BINS/tools.tar.xz" "$into" <<'EOF'
import sys
import tarfile

safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # Python >= 3.11.4, 3.12
with tarfile.open(sys.argv[1]) as tar:
    tar.extractall(sys.argv[2], **safe)
EOF
  export PATH="$into/bin:$PATH"
}

if on_device; then
  PY=${SARCLYM_GPU_PYTHON:-$DEVICE_PY}
  [ -x "$PY" ] || PY=python3
  TMP=${SARCLYM_GPU_TMP:-/tmp}
  log "GPU machine: $PY, wheels into $TMP/site"
  [ -d "$WHL" ] || { log "no .whl/ in the working tree: name .whl in carry"; exit 2; }
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$TMP/site" "$WHL"/*.whl
  export PYTHONPATH="$ROOT/src:$TMP/site:$ROOT"
  unpack_tools "$PY" "$TMP/gpu-bin"
  export SARCLYM_GPU_RUN="GPU-machine path: wheels in $TMP/site, sarclym from $ROOT/src"
else
  PY="$ROOT/.venv/bin/python"
  [ -x "$PY" ] || { log "no .venv: run ./dev.sh setup first"; exit 2; }
  prepare_wheels "$PY"
  prepare_tools
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # sarclym: the editable install
  unpack_tools "$PY" "$ROOT/build/gpu/tools"
  export SARCLYM_GPU_RUN="CPU path: .venv"
fi

export PYTHONUNBUFFERED=1
if [ "${1:-}" = "train-default" ]; then
  # The default model's next version (2.3.0; 2.2.0, trained on 2 CPU cores with 48 epochs on
  # 2000 studies, ships now): its network and input (two_branch_grid_pool2, 512x256) on 2400
  # studies of phantom 2 with 48 epochs, the paper-size cross-validation too. Later arguments
  # override these (argparse: the last value wins). The version lands in
  # $OUT/registry/<version>/ (4 files, under 1 MB).
  shift
  OUTDIR=${OUT:-$ROOT/build/gpu}
  mkdir -p "$OUTDIR"
  DEVICE=cpu
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DEVICE=cuda
  fi
  JOBS=$(nproc)
  log "training the default on $DEVICE, $JOBS processes making the studies"
  exec "$PY" -m sarclym.node.cli retrain --synthetic-cohort 2400 --cohort-seed 2026 \
    --phantom 2 --folds 5 --epochs 48 --batch-size 16 --lr 0.003 --seed 0 \
    --arch two_branch_grid_pool2 --suv-max 10 --input-size 512x256 --paper-size \
    --device "$DEVICE" --jobs "$JOBS" --version 2.3.0 --registry "$OUTDIR/registry" \
    --inputs-cache "${SARCLYM_GPU_TMP:-/tmp}/sarclym-train-inputs.npz" "$@"
fi
exec "$PY" -m tests.gpu.gpu_check "$@"
