#!/usr/bin/env bash
# benchmarks/gpu_check.py on the GPU machine: install the carried wheels (.whl/, made by
# ../shared/device/wheels.sh) into /tmp/site when there are any, put them and this checkout on
# PYTHONPATH, and run the check with this script's arguments.
#   benchmarks/gpu_check.sh [--out DIR] [--data runs/gpu_data] [more gpu_check.py options]
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check.sh: error: installing the wheels in .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
