#!/usr/bin/env bash
# One call on a lent CUDA machine: the CUDA tests, SAP's overhead on the GPU, and the part of the
# paper re-measurement that is too slow for a 2-core CPU (docs/results.md, issue 13).
#
#   bash benchmarks/device_check.sh DATA_DIR [RUN_DIR]
#
# DATA_DIR holds the MNIST IDX files. RUN_DIR, if given, is a finished (or partly finished)
# `benchmarks/paper_claim.py` output directory from a CPU run: it is copied and resumed on the
# GPU, so the paired comparisons use the same trained models and ensemble as the CPU tables
# (cache keys do not include the device). Everything it writes goes to $OUT (default ./device-out):
# env.txt, tests.log, sap_overhead.md, paper.log and paper-gpu.tgz (the resumed run directory).
# Each step has its own time limit, so that one slow step cannot starve the others.
set -u
DATA=${1:?usage: device_check.sh DATA_DIR [RUN_DIR]}
RUN=${2:-}
OUT=${OUT:-device-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

stamp "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stamp "CUDA tests"
timeout 180 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    "tests/test_sap.py::test_cuda_with_cpu_generator" \
    "tests/test_attacks.py::test_cuda_with_a_cpu_generator_matches_the_contract" \
    >"$OUT/tests.log" 2>&1
echo "pytest exit $?" >>"$OUT/tests.log"
tail -n 25 "$OUT/tests.log"

stamp "SAP overhead"
{ timeout 60 $PY benchmarks/sap_overhead.py --device cuda --batch-size 256 --repeats 30 --threads 4
  timeout 60 $PY benchmarks/sap_overhead.py --device cuda --batch-size 4096 --repeats 15 --threads 4
  timeout 150 $PY benchmarks/sap_overhead.py --device cuda --batch-size 4096 --repeats 15 --threads 4 --compile
} >"$OUT/sap_overhead.md" 2>&1
grep -E "^\||^SAP" "$OUT/sap_overhead.md"

if [ -n "$RUN" ]; then
  stamp "paper setting on CUDA (resuming $RUN)"
  rm -rf /tmp/paper-gpu && cp -r "$RUN" /tmp/paper-gpu && find /tmp/paper-gpu -name .lock -delete
  LEFT=$(( ${BUDGET_S:-540} - ($(date +%s) - T0) ))
  timeout $LEFT $PY benchmarks/paper_claim.py --config examples/mnist_paper.toml --data-dir "$DATA" \
      --out /tmp/paper-gpu --device cuda --threads 2 --skip-transfer --eps 0.3 --paired-size 1000 --mixture multi-sap --no-progress \
      >"$OUT/paper.log" 2>&1
  echo "paper_claim exit $?" >>"$OUT/paper.log"
  tail -n 40 "$OUT/paper.log"
  tar czf "$OUT/paper-gpu.tgz" -C /tmp paper-gpu
fi
stamp "done"
