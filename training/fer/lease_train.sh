#!/usr/bin/env bash
# Trains FER runs side by side on a lent GPU machine (device tool), which has JAX and PyTorch but
# no TensorFlow. Expects, in the ignored folder .devrun/: the keras, optree and namex wheels for
# the machine's Python and fer.npz.xz (x_train, y_train, x_val, y_val of the shared FER npz).
# Writes the best runs' weights (in pieces) and all logs to $OUT. JAX first; PyTorch if JAX fails.
# Further arguments go to parallel_runs, e.g. a distillation (teacher.py's files, also in .devrun/):
#   usage: bash training/fer/lease_train.sh BUDGET_SECONDS
#          bash training/fer/lease_train.sh 500 --preset distill --init-from .devrun/student_init.npz \
#            -- --teacher .devrun/teacher.npz
set -u
budget=${1:-420}
shift
extra=("$@")
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devrun/*.whl || exit 1
export PYTHONPATH=/tmp/site:training/fer:services/fer:packages/moodtunes-common
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.devrun/fer.npz.xz'), open('/tmp/fer.npz', 'wb'))" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for backend in jax torch; do
  left=$((budget - SECONDS))
  [ "$left" -lt 90 ] && { echo "no time left for $backend"; break; }
  echo "== backend $backend, budget ${left}s"
  KERAS_BACKEND=$backend python3 -m moodtunes_fer_training.parallel_runs --data /tmp/fer.npz \
    --out /tmp/runs_$backend --budget "$left" --export-dir "$OUT" "${extra[@]}"
  if [ -s /tmp/runs_$backend/ranking.json ] && [ "$(cat /tmp/runs_$backend/ranking.json)" != "[]" ]; then break; fi
  for f in /tmp/runs_$backend/*/train.log; do echo "--- $f"; tail -25 "$f"; done
done
ls -la "$OUT"
