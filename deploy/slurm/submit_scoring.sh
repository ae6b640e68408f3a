#!/bin/bash
# Submit the scoring array and the merge that waits for it (docs/SCALE_OUT.md).
#   deploy/slurm/submit_scoring.sh /shared/archive /shared/scores 16
set -euo pipefail
archive=${1:?usage: submit_scoring.sh ARCHIVE_DIR OUT_DIR N}
out=${2:?usage: submit_scoring.sh ARCHIVE_DIR OUT_DIR N}
n=${3:?usage: submit_scoring.sh ARCHIVE_DIR OUT_DIR N}
here=$(cd "$(dirname "$0")" && pwd)
array=$(sbatch --parsable --array="1-$n" "$here/score_array.sbatch" "$archive" "$out")
merge=$(sbatch --parsable --dependency="afterok:${array%%;*}" "$here/merge.sbatch" "$out" "$n")
echo "scoring: job array $array ($n shards); merge: job $merge -> $out/scores.csv"
