#!/bin/sh
# The nightly refresh, one command for cron, Airflow and an ECS scheduled task:
#
#   deploy/nightly.sh -p parameters/prod.yaml [--set KEY=VALUE ...]
#
# 1. `workbench run` trains, reusing every step whose inputs did not change;
# 2. `workbench models promote` moves @champion to that run only if it beats the current champion
#    on the same rows (NIGHTLY_METRIC, default test_accuracy) and meets NIGHTLY_REQUIRE if set
#    (e.g. 'test_roc_auc>=0.80'); a gate that holds the champion back exits 1, which is no failure;
# 3. `workbench run --steps score` scores score.source with @champion, publishing to PUBLISH_URL when
#    set (the database's password comes from PGPASSWORD or ~/.pgpass, never from a parameter).
# The options given (-p, --set) go to every command. Exits non-zero on any other error.
set -eu

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
workbench run "$@" >"$out" || status=$?
cat "$out"
[ "$status" -eq 0 ] || exit "$status"
run=$(awk '$1 == "run" && NF > 1 { print $2; exit }' "$out")
[ -n "$run" ] || { echo "nightly: workbench run printed no run id" >&2; exit 1; }

promote() {
    if [ -n "${NIGHTLY_REQUIRE:-}" ]; then
        set -- --require "$NIGHTLY_REQUIRE" "$@"
    fi
    workbench models promote "$run" --alias champion --better-than champion \
        --metric "${NIGHTLY_METRIC:-test_accuracy}" "$@" --reason "nightly refresh"
}
status=0
promote "$@" 2>"$out" || status=$?
cat "$out" >&2
# the gate holding the champion back is no failure; anything else (a bad option, a lost database) is
if [ "$status" -ne 0 ] && ! { [ "$status" -eq 1 ] && grep -q "not promoted to @champion" "$out"; }; then
    exit "$status"
fi

if [ -n "${PUBLISH_URL:-}" ]; then
    set -- "$@" --set "publish.url=$PUBLISH_URL"
fi
workbench run --steps score --set score.model_run=@champion "$@"
