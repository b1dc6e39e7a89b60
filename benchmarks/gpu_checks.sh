#!/usr/bin/env bash
# Everything only a GPU can show, in one call on a lent card, cheapest first:
#   1. the kernel tests compiled (no interpreter; bf16 included), then the model-level backend tests
#      and the CUDA paths of the trainer's generator and TREAD's routing copy,
#   2. benchmarks/bench_kernels.py at PRX 1.2B shapes (Triton vs SDPA, fused vs torch norm+RoPE),
#   3. benchmarks/bench_trainer_gpu.py: the trainer at prx-1.2b, batch 32, bf16: Triton+compile,
#      the same with the update of before 2026-11-27 (trainer_host_update), the same reading
#      its batches from shards through the trainer's loader (trainer_shards),
#      where its GPU time goes (trainer_profile), torch SDPA+compile, Triton eager, and last the
#      trainer compiled with inductor's max_autotune (trainer_max_autotune).
# ONLY="kernel_tests bench_kernels" runs just the stages named. Each stage gets what is left of
# BUDGET seconds (default 420) so a slow stage cannot eat the rest; logs go to $OUT (or
# /tmp/gpu-checks). The repo is used in place via PYTHONPATH. A fresh card started in about 30 s
# (2026-11-27); the first torch.compile of the trainer there takes 85 s, later ones about 30 s. The card's
# image (python 3.12, torch 2.11, triton 3.6, 2026-11) lacks pydantic: fetch the wheels once here,
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
# and carry .whl with the call: `BUDGET=430 bash benchmarks/gpu_checks.sh` took 230 s on an H200.
# bench_kernels times the backward candidates of benchmarks/attention_variants/ beside the project's
# kernel unless ATTENTION_ALT says otherwise (ATTENTION_ALT= for none). To A/B other attention
# versions in the same process, write them here first (the card gets the working tree, not its
# history; untracked files travel with the call) and pass their labels, e.g.
#   git show 'c51b3b4^:speedrun/kernels/triton_attention.py' > benchmarks/attn_split_bwd.py
#   cp my_attention_variant.py benchmarks/attn_variant.py
#   ATTENTION_ALT="split-bwd=benchmarks/attn_split_bwd.py variant=benchmarks/attn_variant.py" bash ...
# (only main survives between sessions: a variant that lives on a branch must be copied in by hand)
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
BUDGET=${BUDGET:-420}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PWD:/tmp/site"
fi

stage() {  # stage NAME MAX_SECONDS CMD...: run CMD with min(MAX, time left), log to $OUT/NAME.txt
  local name=$1 max=$2; shift 2
  case " ${ONLY:-$name} " in *" $name "*) ;; *) return ;; esac  # ONLY="a b": run just those stages
  local left=$((BUDGET - SECONDS - 5))
  local limit=$((max < left ? max : left))
  if [ "$limit" -lt 20 ]; then echo "== $name: skipped, ${left}s left"; return; fi
  echo "== $name (limit ${limit}s, t=${SECONDS}s)"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   rc=$? after $((SECONDS))s"
  tail -n "${TAIL:-12}" "$OUT/$name.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, triton, pydantic; print('torch', torch.__version__, 'triton', triton.__version__, \
'pydantic', pydantic.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/env.txt"

XDIST=$(python3 -c 'import xdist' 2>/dev/null && echo '-n 8')  # compiling kernels is CPU-bound
# The lowering and resource tests compile for sm_90 on any machine: CI runs them, the card need not.
# The model-level tests torch.compile a model and get their own stage: under xdist they outlived
# the 150 s that the 41 kernel tests needed with them (H100, 2026-11-27).
TAIL=6 stage kernel_tests 120 python3 -m pytest -q -p no:cacheprovider $XDIST tests/kernels -rs --durations=5 \
  --ignore=tests/kernels/test_triton_lowering.py --ignore=tests/kernels/test_kernel_resources.py \
  --ignore=tests/kernels/test_model_backends.py
TAIL=6 stage model_backend_tests 150 \
  python3 -m pytest -q -p no:cacheprovider tests/kernels/test_model_backends.py -rs --durations=5
# The trainer draws its training randomness on the GPU (its generator must survive a checkpoint);
# TREAD copies its CPU-drawn routing from pinned memory.
TAIL=4 stage cuda_host_tests 60 python3 -m pytest -q -p no:cacheprovider tests/test_train.py \
  tests/components/test_tread.py -k cuda -rs
CANDIDATES=benchmarks/attention_variants
export ATTENTION_ALT=${ATTENTION_ALT-"key-tiles=$CANDIDATES/key_tile_grid.py small-tiles=$CANDIDATES/small_tiles.py"}
TAIL=24 stage bench_kernels 150 python3 benchmarks/bench_kernels.py
TAIL=2 stage trainer_triton_compile 170 python3 benchmarks/bench_trainer_gpu.py --kernels triton --compile
# The update as before the fused AdamW took the clip and the non-finite skip into its kernel:
# the difference from trainer_triton_compile is that change's gain.
TAIL=2 stage trainer_host_update 170 python3 benchmarks/bench_trainer_gpu.py --kernels triton --compile --host-update
TAIL=2 stage trainer_shards 170 python3 benchmarks/bench_trainer_gpu.py --kernels triton --compile --data shards
TAIL=35 stage trainer_profile 140 python3 benchmarks/bench_trainer_gpu.py --kernels triton --compile --steps 30 --profile 4
TAIL=2 stage trainer_torch_compile 150 python3 benchmarks/bench_trainer_gpu.py --kernels torch --compile
TAIL=2 stage trainer_triton_eager 60 python3 benchmarks/bench_trainer_gpu.py --kernels triton --no-compile --steps 20
# Inductor's Triton GEMM templates with fused epilogues, against the 19 ms of elementwise kernels
# per step (H100, 2026-11-27); autotuning every GEMM shape makes the warmup minutes long.
TAIL=2 stage trainer_max_autotune 300 \
  python3 benchmarks/bench_trainer_gpu.py --kernels triton --compile --inductor max_autotune=True
echo "== done at ${SECONDS}s"
