#!/usr/bin/env bash
# PHI with and without the pattern recognizers, one PHI student, the same checkpoint:
#   1. in RUN (ingested, or ingest it), the cached/shipped PHI teacher answers (budget 0: no
#      new requests) and a PHI student trained with train.seed = SEED;
#   2. extract presidio dev with extract.phi_recognizers = [] (student alone), evaluate;
#   3. extract again with the default recognizers (fused), evaluate;
#   4. print strict P/R/F1 and token recall per dataset for student, phi_rules and the teacher.
# Environment: BIN (the biodistill binary), CONFIG (pipelines/default.toml), RUN
# (runs/phi-fusion), SEED (42), CACHE (a teacher cache holding the answers; default the run's).
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug/biodistill}
CONFIG=${CONFIG:-pipelines/default.toml}
RUN=${RUN:-runs/phi-fusion}
SEED=${SEED:-42}
[ -x "$BIN" ] || { echo "phi_fusion: no binary at $BIN (run make build)" >&2; exit 2; }
bd() { "$BIN" --config "$CONFIG" --run-dir "$RUN" "$@"; }
cache=()
[ -n "${CACHE:-}" ] && cache=(--set "teacher.cache_path=\"$CACHE\"")
mkdir -p "$RUN"
[ -f "$RUN/sentences.parquet" ] || bd ingest
bd "${cache[@]}" label --task phi --budget 0
[ -d "$RUN/student/phi" ] || BIODISTILL_TRAIN_SEED=$SEED bd --set 'train.tasks=["phi"]' train
only=(--set 'extract.tasks=["phi"]' --set 'extract.splits=["dev"]' --set 'extract.sources={phi=["presidio"]}'
      --set 'eval.tasks=["phi"]')
for mode in alone fused; do
  recognizers=()
  [ "$mode" = alone ] && recognizers=(--set 'extract.phi_recognizers=[]')
  bd "${only[@]}" "${recognizers[@]}" extract >/dev/null
  bd "${only[@]}" "${recognizers[@]}" eval >/dev/null
  bd sql --format csv "SELECT '$mode' AS mode, dataset, system, subset, metric, round(value, 3) AS value, n \
    FROM eval_results WHERE task = 'phi' AND metric IN ('strict_precision', 'strict_recall', 'strict_f1', \
    'token_recall', 'strict_f1_diff', 'strict_f1_diff_ci_low', 'strict_f1_diff_ci_high') \
    ORDER BY dataset, system, subset, metric" | tee "$RUN/phi_fusion-$mode.csv"
done
bd sql --format csv "SELECT array_to_string(found_by, '+') AS found_by, count(*) AS spans FROM phi_spans GROUP BY 1 ORDER BY 2 DESC"
