#!/bin/bash
# Sharded prediction as a SLURM job array: task i predicts part i of the case list into one shared folder.
#
#   sbatch --array=0-7 docker/scale-out/slurm-predict-array.sh          # 8 parts, run as the queue allows
#   INPUT=/shared/scans OUTPUT=/shared/labels MODEL=/shared/bundles/phantoms sbatch --array=0-7 ...
#
# Each task runs `medmamba predict --num-parts N --part-id K` (case k of the sorted case list belongs to
# part k mod N, nnU-Net's convention) and writes predict_summary.part-K-of-N.json; the last part to
# finish merges them into predict_summary.json (or run `medmamba predict --merge-summary OUTPUT`).
# A failed or preempted task is simply resubmitted (`sbatch --array=3 ...`): --continue keeps its
# complete outputs. OUTPUT must be on a file system every node sees.
#SBATCH --job-name=medmamba-predict
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=02:00:00
#SBATCH --output=medmamba-predict-%A_%a.log
set -euo pipefail

: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(N-1): SLURM_ARRAY_TASK_ID is not set}"
: "${SLURM_ARRAY_TASK_COUNT:?submit with sbatch --array=0-(N-1): SLURM_ARRAY_TASK_COUNT is not set}"
INPUT="${INPUT:-/shared/scans}"
OUTPUT="${OUTPUT:-/shared/labels}"
MODEL="${MODEL:-/shared/bundles/model}"
# --array=1-8 works too: parts are numbered from the array's first index
PART_ID=$(( SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0} ))

exec medmamba predict --input "$INPUT" --output "$OUTPUT" --model "$MODEL" \
    --num-parts "$SLURM_ARRAY_TASK_COUNT" --part-id "$PART_ID" \
    --threads "${SLURM_CPUS_PER_TASK:-1}" --continue
