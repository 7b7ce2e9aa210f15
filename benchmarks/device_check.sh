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
DEVICE=${DEVICE:-cuda}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

stamp "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

PAPER_PID=
if [ -n "$RUN" ]; then
  # in the background: the CUDA tests run beside it (their results do not depend on timing)
  stamp "paper setting on CUDA (resuming $RUN)"
  rm -rf /tmp/paper-gpu && cp -r "$RUN" /tmp/paper-gpu && find /tmp/paper-gpu -name .lock -delete
  timeout "${PAPER_S:-450}" $PY benchmarks/paper_claim.py --config examples/mnist_paper.toml --data-dir "$DATA" \
      --out /tmp/paper-gpu --device "$DEVICE" --threads 2 --skip-transfer --eps 0.3 --paired-size 1000 \
      --mixture multi-sap --no-progress >"$OUT/paper.log" 2>&1 &
  PAPER_PID=$!
fi

stamp "CUDA tests"
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    "tests/test_sap.py::test_cuda_with_cpu_generator" \
    "tests/test_attacks.py::test_cuda_with_a_cpu_generator_matches_the_contract" \
    >"$OUT/tests.log" 2>&1
echo "pytest exit $?" >>"$OUT/tests.log"
tail -n 25 "$OUT/tests.log"

if [ -n "$PAPER_PID" ]; then
  wait "$PAPER_PID"; echo "paper_claim exit $?" >>"$OUT/paper.log"
  stamp "paper setting done"
  grep -v "Warning\|parts.append\|warnings.warn" "$OUT/paper.log" | tail -n 30
  tar czf "$OUT/paper-gpu.tgz" -C /tmp paper-gpu
fi

# last, alone on the GPU: timings
LEFT=$(( ${BUDGET_S:-545} - ($(date +%s) - T0) ))
stamp "SAP overhead ($LEFT s left)"
if [ "$LEFT" -gt 40 ]; then
  { timeout 30 $PY benchmarks/sap_overhead.py --device "$DEVICE" --batch-size 256 --repeats 30 --threads 4
    timeout 30 $PY benchmarks/sap_overhead.py --device "$DEVICE" --batch-size 4096 --repeats 15 --naive-repeats 1 --threads 4
    LEFT=$(( ${BUDGET_S:-545} - ($(date +%s) - T0) ))
    if [ "$LEFT" -gt 60 ]; then
      timeout $(( LEFT - 10 )) $PY benchmarks/sap_overhead.py --device "$DEVICE" --batch-size 4096 --repeats 15 --threads 4 --compile
    fi
  } >"$OUT/sap_overhead.md" 2>&1
  grep -E "^\||^SAP" "$OUT/sap_overhead.md"
fi
stamp "done"
