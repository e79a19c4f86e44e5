#!/usr/bin/env bash
# Wheels for an offline GPU node (reviews/gpu_first_run.md §4): DALI, PyAV and DALI's
# import-time dependencies (optree + typing-extensions, astunparse, six, gast, packaging: a fresh
# venv lacks it and DALI's _autograph imports it), downloaded for the
# node's Python and platform, big files split into parts for size-capped transfers, and an
# install.sh that reassembles them (checking SHA-256) and installs with --no-index --no-deps.
# torch and numpy are the node's own. Then, on the node, from the checkout:
#   bash DIR/install.sh && PYTHONPATH=$PWD benchmarks/gpu_check.sh --deadline-s 300
#
# usage: benchmarks/offline_bundle.sh DIR [--split-mib 60] [--python-version 3.12]
#                                         [--platform manylinux_2_28_x86_64] [--dali-version V]
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
DIR=$1; shift
SPLIT_MIB=60
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PLATFORM=manylinux_2_28_x86_64
DALI_VERSION=$(python3 -c 'import nvidia.dali as d; print(d.__version__)' 2>/dev/null || echo 2.4.0)
while [ $# -gt 0 ]; do
  case "$1" in
    --split-mib) SPLIT_MIB=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    --platform) PLATFORM=$2; shift 2 ;;
    --dali-version) DALI_VERSION=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "offline_bundle.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$SPLIT_MIB" in ''|*[!0-9]*) echo "offline_bundle.sh: --split-mib must be a whole number, not $SPLIT_MIB" >&2; exit 2 ;; esac
[ "$SPLIT_MIB" -ge 1 ] || { echo "offline_bundle.sh: --split-mib must be >= 1" >&2; exit 2; }
if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
  echo "offline_bundle.sh: $DIR exists and is not empty" >&2; exit 2
fi
mkdir -p "$DIR/wheels"

PACKAGES=("nvidia-dali-cuda130==$DALI_VERSION" av optree typing-extensions astunparse six gast
          packaging)
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYVER" --platform "$PLATFORM" --platform manylinux2014_x86_64 \
  --platform any -d "$DIR/wheels" "${PACKAGES[@]}"

# checksums of the whole files, then split what is larger than the cap
(cd "$DIR/wheels" && sha256sum -- *.whl > ../SHA256SUMS)
LIMIT=$((SPLIT_MIB * 1024 * 1024))
for f in "$DIR"/wheels/*.whl; do
  if [ "$(stat -c %s "$f")" -gt "$LIMIT" ]; then
    split -b "$LIMIT" -d -a 3 -- "$f" "$f.part-"
    rm -- "$f"
  fi
done

cat > "$DIR/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Reassemble the split wheels, check them against SHA256SUMS, install offline.
# PYTHON=/path/to/python bash install.sh   (default: python3; the python that runs gpu_check)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
cd "$HERE/wheels"
for first in *.part-000; do
  [ -e "$first" ] || continue
  whole=${first%.part-000}
  cat -- "$whole".part-* > "$whole.tmp" && mv -- "$whole.tmp" "$whole"
  rm -- "$whole".part-*
done
sha256sum --quiet -c ../SHA256SUMS
"$PY" -m pip install --no-index --no-deps -- *.whl
"$PY" -c 'import nvidia.dali, av, optree; print("installed: DALI", nvidia.dali.__version__, "PyAV", av.__version__)'
INSTALL
chmod +x "$DIR/install.sh"
echo "$DIR: $(ls "$DIR/wheels" | wc -l) files, $(du -sh "$DIR" | cut -f1) for Python $PYVER on $PLATFORM"
ls -l "$DIR/wheels"
