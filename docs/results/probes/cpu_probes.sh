#!/bin/sh
# The reduced CPU budget of docs/results/probes.md, stage by stage (one core:
# OMP_NUM_THREADS=1, --threads 1). Every stage appends to its JSON and skips runs already
# there, so the script can be re-run after a stop.
# Usage: sh docs/results/probes/cpu_probes.sh [STAGE...]   (default: A B D C F E G K H I L J)
export OMP_NUM_THREADS=1
MODELS="--model lmn --model gpt2 --model mamba2 --model rwkv --model mamba"
# LMN's other strides and read rules (plain LMN, stride 2 "latest", is in mqar.json / distance.json with the same budget)
STRIDES="--model lmn:read=digits --model lmn:stride=3 --model lmn:stride=3,read=digits --model lmn:stride=4 --model lmn:stride=4,read=digits"
MQAR="--task-opt vocab=64 --task-opt n_test=512 --steps 400 --batch-size 32 --eval-interval 100 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1,2 --sweep first"
DIST="--task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --cell block_size=160,distances=1;2;4;8;16;32;64;128"
STAGES=${*:-A B D C F E G K H I L J M N O}
for stage in $STAGES; do
  case $stage in
    A) lmn probe mqar $MODELS --cell block_size=64,pairs=4 $MQAR ;;
    B) lmn probe mqar --name mqar-strides $STRIDES --cell block_size=64,pairs=4 $MQAR ;;
    C) lmn probe distance $MODELS $DIST --seeds 1 --lr-from docs/results/probes/mqar.json ;;
    D) lmn probe distance --name distance-strides $STRIDES $DIST --seeds 1 --lr-from docs/results/probes/mqar-strides.json ;;
    E) lmn probe mqar $MODELS --cell block_size=64,pairs=4 --cell block_size=128,pairs=8 $MQAR ;;
    # a 5x longer budget for the two cheapest models only (does LMN learn MQAR at all, given time?)
    F) lmn probe mqar --name mqar-long --model lmn --model gpt2 --cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1 --sweep first ;;
    # second seed of the distance probes (every model, same lr as seed 1)
    G) lmn probe distance $MODELS $DIST --seeds 1,2 --lr-from docs/results/probes/mqar.json
       lmn probe distance --name distance-strides $STRIDES $DIST --seeds 1,2 --lr-from docs/results/probes/mqar-strides.json ;;
    # passkey (d = 16 ... 252 at T = 256) and selective copying (Mamba's task at T = 128, M = 16), seed 1
    H) lmn probe passkey $MODELS --cell block_size=256 --task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --seeds 1 --lr-from docs/results/probes/mqar.json ;;
    I) lmn probe selective-copy $MODELS --cell block_size=128,n_tokens=16 --task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --seeds 1 --lr-from docs/results/probes/mqar.json ;;
    # the distance probe to d = 256 (T = 288), seed 1
    J) lmn probe distance $MODELS $DIST --seeds 1 --cell "block_size=288,distances=1;2;4;8;16;32;64;128;256" --lr-from docs/results/probes/mqar.json ;;
    # LMN's strides and read rules on MQAR (128, 8) too (lr of each tree from its (64, 4) sweep)
    K) lmn probe mqar --name mqar-strides $STRIDES --cell block_size=64,pairs=4 --cell block_size=128,pairs=8 $MQAR ;;
    # the best tree of stage B on the longer budget of stage F
    L) lmn probe mqar --name mqar-long --model lmn:stride=4,read=digits --cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1 --sweep first ;;
    # second seeds: the longer MQAR check (stages F and L), passkey and selective copying (H, I)
    M) lmn probe mqar --name mqar-long --model lmn --model gpt2 --cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1,2 --sweep first
       lmn probe mqar --name mqar-long --model lmn:stride=4,read=digits --cell block_size=64,pairs=4 --task-opt vocab=64 --task-opt n_test=512 --steps 2000 --batch-size 32 --eval-interval 500 --eval-iters 4 --lrs 3e-3,1e-2 --seeds 1,2 --sweep first
       lmn probe selective-copy $MODELS --cell block_size=128,n_tokens=16 --task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --seeds 1,2 --lr-from docs/results/probes/mqar.json
       lmn probe passkey $MODELS --cell block_size=256 --task-opt n_test=512 --steps 300 --batch-size 16 --eval-interval 100 --eval-iters 4 --seeds 1,2 --lr-from docs/results/probes/mqar.json ;;
    # passkey at 2,000 steps, two seeds: the three cheapest models (N), LMN + 16 pinned tokens and its state control (O)
    N) lmn probe passkey --name passkey-long --model lmn --model gpt2 --model mamba2 --cell block_size=256 --task-opt n_test=512 --steps 2000 --batch-size 16 --eval-interval 500 --eval-iters 4 --seeds 1,2 --lr-from docs/results/probes/mqar.json ;;
    O) lmn probe passkey --name passkey-long-pinned --model lmn:pinned=16 --model lmn:n_banks=6 --cell block_size=256 --task-opt n_test=512 --steps 2000 --batch-size 16 --eval-interval 500 --eval-iters 4 --seeds 1,2 --lr-from docs/results/probes/mqar-pinned.json ;;
  esac
done
