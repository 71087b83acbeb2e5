#!/usr/bin/env bash
# The GPU benchmark in one call, from the repository alone (plus .wheels/gpu, staged here
# beforehand by tools/gpu/stage_wheels.sh): unpacks the staged wheels, without a registry, onto
# PYTHONPATH in front of the machine's own packages (torch, numpy, transformers...), runs
# the GPU test tier, the training-step benchmark (ours against the stock step, every variant,
# within a time budget), the loader benchmark and the multi-GPU projection. Writes JSON,
# markdown and logs under $OUT (default ./out/bench-gpu) and prints the tables last.
#   make bench-gpu                       # on the GPU machine
#   tools/gpu/bench_gpu.sh --tiny        # CPU rehearsal: tiny U-Net, GPU tests skipped
#   tools/gpu/bench_gpu.sh --only 512:32:compile+cl   # one row
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-$ROOT/out/bench-gpu}"
PYTHON="${PYTHON:-python3}"
SITE="${DTJ_BENCH_SITE:-/tmp/dtj-bench-site}"
TINY=""
[ "${1:-}" = "--tiny" ] && TINY="--tiny" && shift
# Any further arguments go to train_step.py (e.g. --only 256:128:compile+cl, --budget-s 200).
mkdir -p "$OUT"
cd "$ROOT" || exit 2
# The staged packages first, then the machine's own (torch, numpy, transformers...).
export PYTHONPATH="$SITE:$ROOT/trainer:$ROOT/tools/bench${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
log() { echo "[bench-gpu +$(( $(date +%s) - started ))s] $*"; }

"$PYTHON" tools/gpu/unpack_wheels.py "$ROOT/.wheels/gpu" "$SITE" || exit 2
"$PYTHON" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' | tee "$OUT/environment.txt"

log "GPU tests (pytest -m gpu)"
"$PYTHON" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" \
  >"$OUT/gpu-tests.log" 2>&1
tests_rc=$?
tail -n 5 "$OUT/gpu-tests.log"

log "training step: ours against the stock step"
"$PYTHON" tools/bench/train_step.py $TINY "$@" --out "$OUT" >"$OUT/train_step.log" 2>&1
bench_rc=$?

log "data loader, per core"
loader_samples=$([ -n "$TINY" ] && echo 128 || echo 1024)
"$PYTHON" tools/bench/loader_bench.py --num-samples "$loader_samples" --out "$OUT" \
  >"$OUT/loader.log" 2>&1
loader_rc=$?

log "multi-GPU projection from the measured steps"
"$PYTHON" tools/bench/scaling_projection.py --from-json "$OUT/train_step_bench.json" --out "$OUT" \
  >"$OUT/scaling_projection.md" 2>&1
projection_rc=$?

echo
tail -n +1 "$OUT/train_step_bench.md" 2>/dev/null
tail -n 6 "$OUT/loader.log"
cat "$OUT/scaling_projection.md"
log "done: tests rc=$tests_rc, step bench rc=$bench_rc, loader rc=$loader_rc," \
  "projection rc=$projection_rc; outputs in $OUT"
for rc in "$tests_rc" "$bench_rc" "$loader_rc" "$projection_rc"; do
  [ "$rc" = 0 ] || exit 1
done
