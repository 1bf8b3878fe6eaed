#!/usr/bin/env bash
# The benchmarks as one prepared run on the lent GPU machine (see README, "Benchmarks").
#
# Here, once:   ../shared/tools/gpu-prep.sh            (stages .gpu/: data, checkpoints, wheels)
# There:        bash scripts/gpu-bench.sh [STEP[:SECONDS]] ...   (device run, carry [".gpu"])
#
# STEP is one of: fine (reports/vgg8_finegrained, about 3 min on an H100), search (reports/search,
# VGG8 ch50 + fg25 with BN-recalibration rewards, about 3 min), searchfg (fg25 again, searched around
# the global policy with 16-step finetune rewards and 2 finetune seeds, merged into search's report;
# run it after search), channel (reports/channel_vgg8, about 2 min), channel56
# (reports/channel_resnet56 without the reconstruction column, whose extra finetunes could overrun the limit; about 4 min). Each step runs under its own
# time limit (default below, or :SECONDS) so that one slow step cannot take the others' results with
# it, and leaves STEP.tar.gz (its report files) and STEP.log under $OUT (at most 8 files come back).
# Unpack here with: tar -xzf FILE -C reports
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back}"
[ -d .gpu/whl ] || { echo "no .gpu/: run ../shared/tools/gpu-prep.sh here and carry .gpu" >&2; exit 2; }
if [ -z "${GPU_BENCH_DRY:-}" ]; then  # GPU_BENCH_DRY=1: check the steps here, with this machine's python3
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
fi
export PYTHONUNBUFFERED=1

data=.gpu/cifar10-jpeg.tar.xz
declare -A limit=([fine]=240 [search]=300 [searchfg]=300 [channel]=240 [channel56]=330)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(fine search)
rc=0
for spec in "${steps[@]}"; do
  step=${spec%%:*}
  secs=${limit[$step]:-}
  [ "$spec" != "$step" ] && secs=${spec#*:}
  [ -n "$secs" ] || { echo "unknown step $step (fine, search, searchfg, channel, channel56)" >&2; rc=2; continue; }
  dir=/tmp/bench-${step/searchfg/search}
  mkdir -p "$dir"
  case $step in
    fine) cmd=(python3 benchmarks/finegrained.py --data "$data" --checkpoint .gpu/vgg8_dense.pt --out "$dir") ;;
    search) cmd=(python3 benchmarks/search.py --model vgg8 --data "$data" --checkpoint .gpu/vgg8_dense.pt
                 --tasks ch50,fg25 --out "$dir") ;;
    searchfg) cmd=(python3 benchmarks/search.py --model vgg8 --data "$data" --checkpoint .gpu/vgg8_dense.pt
                   --tasks fg25 --recovery finetune --recovery-steps 16 --around global --radius 0.2 --ft-seeds 2
                   --merge --out "$dir") ;;
    channel) cmd=(python3 benchmarks/channel.py --model vgg8 --data "$data" --checkpoint .gpu/vgg8_dense.pt
                  --out "$dir") ;;
    channel56) cmd=(python3 benchmarks/channel.py --model resnet56 --data "$data"
                    --checkpoint .gpu/resnet56_dense.pt --reconstruct 0 --out "$dir") ;;
  esac
  echo "== $step (limit ${secs}s): ${cmd[*]}"
  start=$(date +%s)
  timeout "$secs" "${cmd[@]}" > "$OUT/$step.log" 2>&1
  code=$?
  echo "== $step: exit $code after $(( $(date +%s) - start )) s" | tee -a "$OUT/$step.log"
  [ $code -eq 0 ] || rc=1
  tar -czf "$OUT/$step.tar.gz" -C "$dir" . 2>/dev/null
done
exit $rc
