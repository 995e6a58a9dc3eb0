#!/bin/bash
export PYTHONUNBUFFERED=1
C="python3 -m pinrec.cli bench quality --datasets sports,yelp --device cuda --data-root /nonexistent --workdir .devq/quality --parallel 24 --max-seconds 410"
$C --variants uc --seeds 0,1,2 --reference .devq/sasrec_reference.py --json $OUT/quality_sy_uc.json > $OUT/quality_sy_uc.log 2>&1 &
$C --variants sasrec --seeds 0 --json $OUT/quality_sy_sasrec.json > $OUT/quality_sy_sasrec.log 2>&1 &
wait
tail -8 $OUT/quality_sy_uc.log; tail -5 $OUT/quality_sy_sasrec.log
cd .devq/quality && tar czf $OUT/runs_sy.tgz runs
