#!/usr/bin/env bash
# Wheels for an offline GPU node (reviews/gpu_first_run.md §4): DALI, PyAV and DALI's
# import-time dependencies (optree + typing-extensions, astunparse, six, gast, packaging: a fresh
# venv lacks it and DALI's _autograph imports it), downloaded for the node's Python and platform;
# files above the cap split into DIR/parts/ for size-capped transfers; the vp9-altref videos
# pre-encoded into DIR/premade/ (the node may have no ffmpeg binary: R3); DIR/CARRY.txt groups
# the paths into transfers of at most the cap and 8 paths each (the device tool's carry); and an
# install.sh that reassembles the parts (checking SHA-256) and installs with --no-index --no-deps.
# torch and numpy are the node's own. Then, on the node, from the checkout:
#   bash DIR/install.sh && PYTHONPATH=$PWD benchmarks/gpu_check.sh --deadline-s 300 --premade DIR/premade
#
# usage: benchmarks/offline_bundle.sh DIR [--split-mib 60] [--python-version 3.12]
#                                         [--platform manylinux_2_28_x86_64] [--dali-version V]
#                                         [--av-version V]   (both default to this machine's)
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage ;; -*) echo "offline_bundle.sh: DIR comes first, not $1" >&2; exit 2 ;; esac
DIR=$1; shift
SPLIT_MIB=60
PYVER=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PLATFORM=manylinux_2_28_x86_64
DALI_VERSION=$(python3 -c 'import nvidia.dali as d; print(d.__version__)' 2>/dev/null || echo 2.4.0)
# PyAV as here too: the project is tested with it (a newer major may change its encoders' API)
AV_VERSION=$(python3 -c 'import av; print(av.__version__)' 2>/dev/null || echo 18.1.0)
while [ $# -gt 0 ]; do
  case "$1" in
    --split-mib) SPLIT_MIB=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    --platform) PLATFORM=$2; shift 2 ;;
    --dali-version) DALI_VERSION=$2; shift 2 ;;
    --av-version) AV_VERSION=$2; shift 2 ;;
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

PACKAGES=("nvidia-dali-cuda130==$DALI_VERSION" "av==$AV_VERSION" optree typing-extensions astunparse six gast
          packaging)
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYVER" --platform "$PLATFORM" --platform manylinux2014_x86_64 \
  --platform any -d "$DIR/wheels" "${PACKAGES[@]}"

# checksums of the whole files, then split what is larger than the cap into parts/
(cd "$DIR/wheels" && sha256sum -- *.whl > ../SHA256SUMS)
LIMIT=$((SPLIT_MIB * 1024 * 1024))
mkdir -p "$DIR/parts"
for f in "$DIR"/wheels/*.whl; do
  if [ "$(stat -c %s "$f")" -gt "$LIMIT" ]; then
    split -b "$LIMIT" -d -a 3 -- "$f" "$DIR/parts/$(basename "$f").part-"
    rm -- "$f"
  fi
done
(cd "$DIR/parts" && ls) > "$DIR/PARTS"

# the vp9-altref videos (R3) pre-encoded here: the node may have no ffmpeg binary
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ABS=$(cd "$DIR" && pwd)
if ! (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
      python3 -m benchmarks.gpu_check --write-premade "$ABS/premade" >/dev/null); then
  echo "offline_bundle.sh: warning: no vp9-altref files (needs ffmpeg and the project here);" \
       "without ffmpeg on the node the vp9-altref (R3) rows will fail as 'not written'" >&2
fi

cat > "$DIR/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# Reassemble the split wheels, check them against SHA256SUMS, install offline.
# PYTHON=/path/to/python bash install.sh   (default: python3; the python that runs gpu_check)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
missing=$(cd "$HERE/parts" 2>/dev/null && while read -r p; do [ -e "$p" ] || echo "$p"; done < "$HERE/PARTS" || true)
if [ -n "$missing" ] && ! (cd "$HERE/wheels" && sha256sum --quiet -c ../SHA256SUMS >/dev/null 2>&1); then
  echo "install.sh: missing parts in $HERE/parts (carry every transfer of CARRY.txt):" $missing >&2
  exit 2
fi
cd "$HERE/wheels"
for first in ../parts/*.part-000; do
  [ -e "$first" ] || continue
  whole=$(basename "${first%.part-000}")
  cat -- "../parts/$whole".part-* > "$whole.tmp" && mv -- "$whole.tmp" "$whole"
  rm -- "../parts/$whole".part-*
done
sha256sum --quiet -c ../SHA256SUMS
# the node's own copies of DALI's small dependencies win (its torch stack uses them too);
# DALI and PyAV are always installed
mapfile -t todo < <("$PY" - *.whl <<'PY'
import importlib.metadata as md, sys
for w in sys.argv[1:]:
    name = w.split("-")[0].replace("_", "-").lower()
    try:
        if name not in ("nvidia-dali-cuda130", "av"):
            md.version(name)
            print(f"keeping the installed {name}", file=sys.stderr)
            continue
    except md.PackageNotFoundError:
        pass
    print(w)
PY
)
"$PY" -m pip install --no-index --no-deps -- "${todo[@]}"
"$PY" -c 'import nvidia.dali, av, optree; print("installed: DALI", nvidia.dali.__version__, "PyAV", av.__version__)'
INSTALL
chmod +x "$DIR/install.sh"

# the transfers: each at most the cap and 8 paths (the device tool's carry), parts first
python3 - "$DIR" "$LIMIT" > "$DIR/CARRY.txt" <<'PLAN'
import json, os, sys
d, cap = sys.argv[1].rstrip("/"), int(sys.argv[2])
def size(p):
    if os.path.isdir(p):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)
    return os.path.getsize(p)
items = [f"{d}/parts/{f}" for f in sorted(os.listdir(f"{d}/parts"))]
items += [f"{d}/{f}" for f in ("wheels", "install.sh", "SHA256SUMS", "PARTS", "premade")
          if os.path.exists(f"{d}/{f}")]
calls = []  # first fit, biggest first: [bytes, paths]
for p in sorted(items, key=size, reverse=True):
    c = next((c for c in calls if c[0] + size(p) <= cap and len(c[1]) < 8), None)
    if c is None:
        c = [0, []]
        calls.append(c)
    c[0] += size(p)
    c[1].append(p)
print(f"# {len(calls)} transfers of <= {cap / 2**20:.0f} MiB and <= 8 paths (the device tool's "
      "carry, one call each, back to back on one warm machine); paths as given to "
      "offline_bundle.sh")
for i, (n, paths) in enumerate(calls, 1):
    print(f"{i} {n / 2**20:.1f}MiB {json.dumps(paths)}")
PLAN

echo "$DIR: $(find "$DIR/wheels" "$DIR/parts" -type f | wc -l) files, $(du -sh "$DIR" | cut -f1) for Python $PYVER on $PLATFORM"
ls -l "$DIR/wheels" "$DIR/parts"
cat "$DIR/CARRY.txt"
