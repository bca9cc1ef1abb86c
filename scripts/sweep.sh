#!/usr/bin/env bash
# Student F1 against one training setting, everything else fixed. Two uses (see the Makefile):
#   make learning-curve  PARAM=train.max_sentences VALUES="25 50 100 200 400": F1 against the
#                        number of silver sentences, what a longer or nightly run would buy;
#   make ablation        PARAM=train.arch VALUES='"conditioned" "markers" "pairwise"': the
#                        relation-head ablation of Gu et al. 2023 on our own data.
#
# In its own run directory (the default run's tables are never touched), sharing the default
# run's teacher cache so sentences labeled before cost nothing:
#   1. ingest, then label LABEL_SAMPLE sentences of TASK with the pipeline's teacher (the largest
#      numeric VALUE for a learning curve, added to what the cache already holds; the config's
#      label.budget otherwise);
#   2. for each value, train the student with `--set PARAM=value` (`train.max_sentences` keeps
#      whole documents in one seeded order, so each sample contains the smaller ones), extract
#      the gold dev documents, and evaluate;
#   3. print one row per value and write sweep.csv in the run directory.
#
# Environment: CONFIG (pipelines/default.toml), TASK (ade), PARAM, VALUES (TOML values),
# RUN (runs/sweep-<param>), CACHE (runs/default/teacher_cache.redb), BIN (the biodistill binary),
# SYSTEM (student; supervised_reference trains on gold instead, named so everywhere),
# LABEL_SAMPLE, METRIC (the task's headline F1; pair_strict_f1 for ade).
set -euo pipefail

CONFIG=${CONFIG:-pipelines/default.toml}
TASK=${TASK:-ade}
PARAM=${PARAM:-train.max_sentences}
VALUES=${VALUES:-"25 50 100 200 400"}
SYSTEM=${SYSTEM:-student}
RUN=${RUN:-runs/sweep-${PARAM##*.}}
CACHE=${CACHE:-runs/default/teacher_cache.redb}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/biodistill}
fail() { echo "sweep: $*" >&2; exit 2; }
case "$TASK" in
  ade) METRIC=${METRIC:-pair_strict_f1} ;;
  gene_disease) METRIC=${METRIC:-positive_f1} ;;
  phi) METRIC=${METRIC:-strict_f1} ;;
  *) fail "unknown TASK=$TASK (ade, gene_disease or phi)" ;;
esac
case "$SYSTEM" in
  student) MODE=() ;;
  supervised_reference) MODE=(--supervised-reference) ;;
  *) fail "unknown SYSTEM=$SYSTEM (student or supervised_reference)" ;;
esac
[ -x "$BIN" ] || fail "no binary at $BIN (run make build)"
[ -n "$VALUES" ] || fail "VALUES is empty"

# A learning curve labels as many sentences as its largest size.
if [ -z "${LABEL_SAMPLE:-}" ] && [ "$PARAM" = train.max_sentences ]; then
  LABEL_SAMPLE=0
  for v in $VALUES; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || fail "train.max_sentences values must be positive integers, got '$v'"
    (( v > LABEL_SAMPLE )) && LABEL_SAMPLE=$v
  done
fi

bd() { "$BIN" --config "$CONFIG" --run-dir "$1" "${@:2}"; }
mkdir -p "$RUN"
bd "$RUN" ingest
if [ "$SYSTEM" = student ]; then
  bd "$RUN" --set "teacher.cache_path=\"$CACHE\"" label --task "$TASK" ${LABEL_SAMPLE:+--budget "$LABEL_SAMPLE"}
fi

csv="$RUN/sweep.csv"
echo "task,system,param,value,train_sentences,train_steps,dataset,metric,metric_value,n" > "$csv"
for v in $VALUES; do
  dir="$RUN/$(echo "$v" | tr -dc 'A-Za-z0-9_.-')"
  rm -rf "$dir" && mkdir -p "$dir"
  for f in "$RUN"/*.parquet; do ln -s "$(realpath "$f")" "$dir/"; done
  report=$(bd "$dir" --set "train.tasks=[\"$TASK\"]" --set "$PARAM=$v" train "${MODE[@]}" 2>/dev/null)
  echo "$report" > "$dir/train_report.txt"
  echo "$PARAM=$v: $(echo "$report" | head -1)"
  sentences=$(echo "$report" | head -1 | sed -E 's/.*: ([0-9]+) sentences.*/\1/')
  steps=$(echo "$report" | head -1 | sed -E 's/.* ([0-9]+) steps.*/\1/')
  # Extraction and evaluation read the arch from the checkpoint; only the task is set here.
  bd "$dir" --set "extract.tasks=[\"$TASK\"]" extract "${MODE[@]}" >/dev/null 2>&1
  bd "$dir" eval >/dev/null 2>&1
  bd "$dir" sql --format csv \
    "SELECT dataset, metric, value, n FROM eval_results WHERE system = '$SYSTEM' AND task = '$TASK' \
     AND subset = 'all' AND metric = '$METRIC' ORDER BY dataset" \
    | tail -n +2 | sed "s/^/$TASK,$SYSTEM,$PARAM,$(echo "$v" | tr -d '"'),$sentences,$steps,/" >> "$csv"
done
echo
column -s, -t < "$csv"
echo "written to $csv"
