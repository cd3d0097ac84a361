#!/bin/bash
# one device call: code-corpus continuations (GPT-2, Mamba-2) + distance probe at T=4160 + kernel parity
# usage: bash runs/gpu17/go.sh LIMIT_S STEPS SEEDS "CODE_RUNS" "DIST_MODELS"
set -u
LIM=$1; STEPS=$2; SEEDS=$3; CODE=$4; DIST=$5
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/src
if ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl; then
  export PYTHONPATH=/tmp/site:$PYTHONPATH; fi
mkdir -p logs
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import torch,transformers,triton;print('torch',torch.__version__,'transformers',transformers.__version__,'triton',triton.__version__,torch.cuda.get_device_name(0))"; } > logs/env.txt 2>&1
{ echo "git: $(git rev-parse HEAD 2>&1)"; git status --short 2>&1 | head -5; } >> logs/env.txt
cat logs/env.txt
pids=()
for r in $CODE; do
  timeout $LIM python3 -m lmn.cli train --out runs/code/$r --resume --max-iters 5000 --threads 1 > logs/code-$r.log 2>&1 & pids+=($!)
done
if [ -n "$DIST" ]; then
  ( timeout 150 python3 -m research.gpu_session all --out logs/parity.jsonl --parts env,parity > logs/parity.log 2>&1 ) & pids+=($!)
fi
C="block_size=4160,distances=1;2;4;8;16;32;64;128;256;512;1024;2048;4096"
for m in $DIST; do n=${m%%:*}
  timeout $LIM python3 -m lmn.cli probe distance --name distance-4k --model $m --cell "$C" --task-opt n_test=512 \
    --steps $STEPS --batch-size 16 --seeds $SEEDS --lr-from docs/results/probes/mqar.json --device cuda \
    --out runs/dist/out-$n --runs-dir runs/dist/runs > logs/dist-$n-s$SEEDS.log 2>&1 & pids+=($!)
done
while sleep 20; do
  alive=0; for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && alive=$((alive+1)); done
  echo "[$(date -u +%T)] alive $alive $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
  for f in logs/code-*.log; do [ -f $f ] && echo "  $f: $(tail -c 300 $f | tr '\r' '\n' | grep step | tail -1)"; done
  [ $alive = 0 ] && break
done
wait
tail -n 3 logs/*.log
tar czf $OUT/code.tgz runs/code 2>/dev/null
tar czf $OUT/dist.tgz runs/dist/out-* $(ls -d runs/dist/runs/*/*/ 2>/dev/null | sed 's#$#final.json#') $(ls -d runs/dist/runs/*/*/ 2>/dev/null | sed 's#$#config.json#') $(ls -d runs/dist/runs/*/*/ 2>/dev/null | sed 's#$#metrics.jsonl#') 2>/dev/null
tar czf $OUT/logs.tgz logs
ls -la $OUT
