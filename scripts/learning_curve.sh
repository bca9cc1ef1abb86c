#!/usr/bin/env bash
# Student F1 against the number of silver (teacher-labeled) training sentences: what a longer
# or nightly-accumulated labeling run would buy. `make learning-curve`.
#
# In its own run directory (the default run's tables are never touched), sharing the default
# run's teacher cache so sentences labeled before cost nothing:
#   1. ingest, then label the largest sample of one task with the pipeline's teacher;
#   2. for each size N, train the student on N silver sentences (`train.max_sentences` keeps
#      whole documents in one seeded order, so each sample contains the smaller ones),
#      extract the gold dev documents, and evaluate;
#   3. print one row per size and write learning_curve.csv beside the run.
#
# Environment: CONFIG (pipelines/default.toml), TASK (ade), SIZES ("25 50 100 200 400"),
# RUN (runs/learning-curve), CACHE (runs/default/teacher_cache.redb), BIN (the biodistill binary),
# METRIC (the task's headline F1; pair_strict_f1 for ade).
set -euo pipefail

CONFIG=${CONFIG:-pipelines/default.toml}
TASK=${TASK:-ade}
SIZES=${SIZES:-"25 50 100 200 400"}
RUN=${RUN:-runs/learning-curve}
CACHE=${CACHE:-runs/default/teacher_cache.redb}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/biodistill}
case "$TASK" in
  ade) METRIC=${METRIC:-pair_strict_f1} ;;
  gene_disease) METRIC=${METRIC:-positive_f1} ;;
  phi) METRIC=${METRIC:-strict_f1} ;;
  *) echo "learning_curve: unknown TASK=$TASK (ade, gene_disease or phi)" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || { echo "learning_curve: no binary at $BIN (run make build)" >&2; exit 2; }

largest=0
for n in $SIZES; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "learning_curve: SIZES must be positive integers, got '$n'" >&2; exit 2; }
  (( n > largest )) && largest=$n
done

bd() { "$BIN" --config "$CONFIG" --run-dir "$1" "${@:2}"; }
mkdir -p "$RUN"
bd "$RUN" ingest
bd "$RUN" --set "teacher.cache_path=\"$CACHE\"" \
  label --task "$TASK" --sample "$largest"

csv="$RUN/learning_curve.csv"
echo "task,silver_sentences_requested,silver_sentences,train_steps,dataset,metric,value,n" > "$csv"
for n in $SIZES; do
  dir="$RUN/n$n"
  rm -rf "$dir" && mkdir -p "$dir"
  for f in "$RUN"/*.parquet; do ln -s "$(realpath "$f")" "$dir/"; done
  report=$(bd "$dir" --set "train.tasks=[\"$TASK\"]" --set "train.max_sentences=$n" train 2>/dev/null)
  echo "$report" | head -1
  sentences=$(echo "$report" | head -1 | sed -E 's/.*: ([0-9]+) sentences.*/\1/')
  steps=$(echo "$report" | head -1 | sed -E 's/.* ([0-9]+) steps.*/\1/')
  bd "$dir" --set "extract.tasks=[\"$TASK\"]" extract >/dev/null 2>&1
  bd "$dir" eval >/dev/null 2>&1
  bd "$dir" sql --format csv \
    "SELECT dataset, metric, value, n FROM eval_results WHERE system = 'student' AND task = '$TASK' \
     AND subset = 'all' AND metric = '$METRIC' ORDER BY dataset" \
    | tail -n +2 | sed "s/^/$TASK,$n,$sentences,$steps,/" >> "$csv"
done
echo
column -s, -t < "$csv"
echo "written to $csv"
