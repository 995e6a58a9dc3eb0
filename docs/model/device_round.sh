#!/bin/bash
# One device round (lent H100): a Beauty sweep file and, beside it, the synthetic MT+OC
# tokens-per-step run, all concurrent on the one GPU. Results land under $OUT.
#   bash docs/model/device_round.sh docs/model/beauty/sweep3.tsv 400 [synth]
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
if [ "${3:-}" = synth ]; then
  python -m jobs.evaluate --events .device_data/synth_events.parquet --item-features .device_data/synth_items.parquet \
    --protocol unordered --variant mt_oc --tokens-per-step 1,2,4,8,16 --device cuda --epochs 60 --patience 8 \
    --batch-size 256 --max-seconds 150 --quiet --json $OUT/synth_mt_tokens.json > $OUT/synth_mt_tokens.log 2>&1 &
fi
RES=$OUT/beauty OUT=$OUT bash docs/model/beauty/sweep.sh "$1" "$2"
wait
