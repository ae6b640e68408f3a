#!/usr/bin/env bash
# Rebuilds a model from its recipe in the background (resumable: run it again after a kill).
# Usage: scripts/train_bundled.sh [recipe]   recipe: a name in trainer/recipes/ (default lite0-seed7, the shipped model v3)
# Logs: runs/<recipe>/train.log; the model folder: runs/<recipe>/export (copy it to resources/model to ship it).
# The recipes name ../shared for the dataset and the weights (see README); any recipe setting can be overridden by
# appending options, e.g. scripts/train_bundled.sh lite0-v2 --data /elsewhere/chest_xray.
set -euo pipefail
cd "$(dirname "$0")/.."
recipe=${1:-lite0-seed7}
shift || true
PY=${PY:-.venv/bin/python}
file=trainer/recipes/$recipe.toml
[ -f "$file" ] || { echo "no recipe $file (have: $(ls trainer/recipes | sed 's/.toml//' | tr '\n' ' '))" >&2; exit 2; }
mkdir -p "runs/$recipe"
nohup nice -n 10 "$PY" -m trainer train --recipe "$file" --run-dir "runs/$recipe" --export "runs/$recipe/export" "$@" \
  >>"runs/$recipe/train.log" 2>&1 &
echo "training $recipe in the background (pid $!); follow: tail -f runs/$recipe/train.log"
