#!/usr/bin/env bash
# Regenerates the `experiment vanishing` table in README.md from a run on the digits data
# set. The table between the experiment-table markers is this script's output: edit the
# experiment, not the table. Extra arguments go to the experiment (e.g. --backend cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -q '<!-- experiment-table:start -->' README.md && grep -q '<!-- experiment-table:end -->' README.md || {
    echo "README.md lacks the <!-- experiment-table:start/end --> markers" >&2
    exit 1
}
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/steadygrad"
# A fixed relative name, since the command line (with it) is part of the table.
table=.experiment-table.md
trap 'rm -f "$table" README.md.tmp' EXIT
"$bin" experiment vanishing --data data/digits_train.csv --valid-data data/digits_valid.csv \
    --no-plots --quiet --markdown "$table" "$@"
awk -v table="$table" '
    /<!-- experiment-table:end -->/ { skip = 0 }
    !skip { print }
    /<!-- experiment-table:start -->/ {
        while ((getline line < table) > 0) print line
        skip = 1
    }
' README.md > README.md.tmp
mv README.md.tmp README.md
echo "README.md: table regenerated" >&2
