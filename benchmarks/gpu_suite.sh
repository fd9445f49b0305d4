#!/bin/bash
# Every GPU figure of benchmarks/RESULTS.md in one run (about 10 minutes on one H100/H200), each
# beside its PyTorch baseline in the same process; JSON, logs and kernel-time summaries of the
# profiled calls go to $OUT (default /tmp/gpu_suite).
#
#     bash benchmarks/gpu_suite.sh               # everything
#     bash benchmarks/gpu_suite.sh ours          # our side only (no baselines), for a quick re-check
#
# Packages the machine lacks can lie as wheels in .whl/ (installed into /tmp/site first).
set -u
cd "$(dirname "$0")/.." || exit
OUT=${OUT:-/tmp/gpu_suite}
RAW=/tmp/gpu_suite_raw
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT" "$RAW"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
BASELINES=1
[ "${1:-all}" = ours ] && BASELINES=0

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$RAW/machine.txt"
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$RAW/machine.txt"

# name, seconds at most, then the benchmark and its flags
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  ((left < 20)) && { echo "== $name: skipped (time)"; return 1; }
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit}s, at ${SECONDS}s)"
  timeout "$limit" python3 "$@" --out="$RAW/$name.json" >"$RAW/$name.log" 2>&1
  local rc=$?
  grep -E "^(Traceback|[A-Za-z]*Error)" "$RAW/$name.log" | tail -3
  echo "   rc=$rc after ${SECONDS}s"
  return $rc
}
bf16=(--preset=tinyllama-1.1b --dtype=bfloat16)
with() { ((BASELINES)) && echo "--baseline=$1" || echo "--baseline="; }
cublas=--xla_gpu_enable_triton_gemm=false  # every matrix product through cuBLAS, none through Triton

step sft_tinyllama 200 benchmarks/train_step.py "${bf16[@]}" --sizes=8x2048 --repeats=5 \
  --profile="$RAW/profile_sft" "$(with torch_eager,torch_compile)"
step dpo_tinyllama 120 benchmarks/dpo_step.py "${bf16[@]}" --sizes=8x1024 --repeats=5 \
  --profile="$RAW/profile_dpo" "$(with torch_eager)"
# Pairs of uneven length (a long chosen chain, a short rejected answer): each way of packing them.
step dpo_packing_tinyllama 120 benchmarks/dpo_step.py "${bf16[@]}" --uneven_pairs=64 --max_length=1024 \
  --batch_size=8 --pack_lengths=1,2 --repeats=5
step decode_tinyllama 120 benchmarks/generate.py "${bf16[@]}" --param_dtype=bfloat16 --batches=64,256 --prompt=128 \
  --new_tokens=128 --profile="$RAW/profile_decode" "$(with hf_generate)"
step sft_smollm2 150 benchmarks/train_step.py --preset=smollm2-135m --dtype=bfloat16 --sizes=16x1024 --repeats=5 \
  "$(with torch_eager,torch_compile)"
# LoRA rank 16 on every projection over a bfloat16 base, beside PEFT on the same model.
step lora_tinyllama 150 benchmarks/train_step.py "${bf16[@]}" --sizes=8x2048 --lora_rank=16 --repeats=5 \
  "$(with peft_eager,peft_compile)"
step attention 60 benchmarks/attention.py "${bf16[@]}" --sizes=8x2048 --segments=4 \
  --kernels=cudnn,cudnn_mask,cudnn_causal,xla
# Kept out of the defaults (slower): every matrix product through cuBLAS; last, so a short budget drops them.
XLA_FLAGS=$cublas step decode_tinyllama_cublas 60 benchmarks/generate.py "${bf16[@]}" --param_dtype=bfloat16 \
  --batches=64,256 --prompt=128 --new_tokens=128
XLA_FLAGS=$cublas step sft_tinyllama_cublas 60 benchmarks/train_step.py "${bf16[@]}" --sizes=8x2048 --repeats=5

for kind in sft dpo decode; do
  [ -d "$RAW/profile_$kind" ] && python3 benchmarks/trace_summary.py "$RAW/profile_$kind" --top=30 \
    --out="$RAW/kernels_$kind.json" >"$RAW/kernels_$kind.txt" 2>&1
done
python3 - "$RAW" "$OUT" <<'PY'
import json, pathlib, sys
raw, out = map(pathlib.Path, sys.argv[1:])
merged = {p.stem: json.loads(p.read_text()) for p in sorted(raw.glob("*.json"))}
merged["machine"] = (raw / "machine.txt").read_text()
(out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
logs = "".join(f"\n===== {p.name}\n{p.read_text()[-6000:]}" for p in sorted(raw.glob("*.log")))
(out / "logs.txt").write_text(logs)
(out / "kernels.txt").write_text("".join(p.read_text() for p in sorted(raw.glob("kernels_*.txt"))))
PY
cat "$RAW"/kernels_*.txt 2>/dev/null | grep -E "device busy|by kind" 
echo "total ${SECONDS}s"
