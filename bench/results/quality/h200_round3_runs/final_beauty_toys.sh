#!/bin/bash
# Quality suite with the defaults (no flags), side by side with the reference; $1 = datasets, $2 = cap (s)
export PYTHONUNBUFFERED=1
python3 -m pinrec.cli bench quality --datasets $1 --variants uc,sasrec --seeds 0,1,2 --device cuda \
  --data-root /nonexistent --workdir .devq/quality --reference .devq/sasrec_reference.py \
  --parallel 24 --max-seconds $2 --json $OUT/quality_$3.json > $OUT/quality_$3.log 2>&1
tail -20 $OUT/quality_$3.log
cd .devq/quality && tar czf $OUT/runs_$3.tgz runs
