#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh: the packages that the lent GPU machine lacks (it has
# Python 3.12, PyTorch, h5py, pandas, scikit-learn and matplotlib, but no faiss, infomap or
# Snakemake, and no network), for CPython 3.12 on manylinux x86_64, at the versions pinned in
# constraints.txt. Run it once in the checkout that the device tool sends (the main repo):
#
#   bash benchmarks/gpu_wheels.sh          # into .whl/ (added to .git/info/exclude)
#   bash benchmarks/gpu_wheels.sh DIR      # into DIR instead (e.g. to check the size)
#
# and name .whl in the call's carry. Everything that travels (tree + wheels) must stay under
# 64 MiB: PuLP (16 MB, Snakemake's optional ILP scheduler) is left out, and gpu_check.sh runs
# Snakemake with --scheduler greedy. Packages that publish no wheel (pure Python, sdist only)
# are built into a py3-none-any wheel here.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-python3}

# Snakemake's dependencies and the project's that the machine lacks (its package list is in the
# device tool's KINDS.md); the rest (numpy, pyyaml, requests, jinja2, ...) are there.
packages=(
  faiss-cpu infomap
  snakemake snakemake-interface-common snakemake-interface-executor-plugins
  snakemake-interface-logger-plugins snakemake-interface-report-plugins
  snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
  argparse-dataclass conda-inject configargparse connection-pool docutils dpath
  fastjsonschema gitdb gitpython humanfriendly immutables jsonschema
  jsonschema-specifications jupyter-core nbformat platformdirs referencing rpds-py
  smart-open smmap tenacity throttler traitlets yte
  sqlmodel sqlalchemy greenlet pydantic pydantic-core annotated-types typing-inspection
)

pin() {  # NAME==VERSION from constraints.txt, whatever its spelling of the name there
  local pattern
  pattern=$(sed 's/[-_.]/[-_.]/g' <<<"$1")
  grep -iE "^${pattern}==" constraints.txt || { echo "$1 is not pinned in constraints.txt" >&2; exit 1; }
}

mkdir -p "$dest"
if [ "$dest" = .whl ] && git rev-parse --git-dir >/dev/null 2>&1; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
fi
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
for name in "${packages[@]}"; do
  requirement=$(pin "$name")
  if ! "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$dest" "$requirement" 2>/dev/null; then
    "$python" -m pip wheel --quiet --no-deps -w "$dest" "$requirement"
  fi
done
if ls "$dest"/*.whl | grep -vE 'cp312|abi3|py3-none-any|py2.py3-none-any'; then
  echo "the wheels above do not fit CPython 3.12; remove them and pin another version" >&2
  exit 1
fi
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
