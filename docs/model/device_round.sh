#!/bin/bash
# One device round on the lent H100: every line of a Beauty sweep file (docs/model/beauty/sweep.sh)
# and every line of an "other" file (NAME<TAB>complete `pinrec eval` args), all concurrent on the
# one GPU. Results: $OUT/beauty/ (+ sweep.json) and $OUT/NAME.{json,log}.
#   bash docs/model/device_round.sh docs/model/beauty/sweep4.tsv 400 docs/model/device/round2.tsv
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if [ -n "${3:-}" ]; then
  while IFS=$'\t' read -r name args; do
    [ -z "$name" ] && continue
    python -m jobs.evaluate $args --json $OUT/$name.json > $OUT/$name.log 2>&1 &
  done < "$3"
fi
[ "$1" != - ] && RES=$OUT/beauty OUT=$OUT bash docs/model/beauty/sweep.sh "$1" "$2"  # "-": no Beauty lines
wait
for f in $OUT/*.log; do echo "== $f"; grep -av "it/s" $f | tail -25; done
# the tool returns a limited number of files: everything in one archive, the summary beside it
(cd $OUT && tar czf /tmp/all.tgz --exclude=sweep.json . && find . -mindepth 1 ! -name sweep.json -delete && mv /tmp/all.tgz .)
