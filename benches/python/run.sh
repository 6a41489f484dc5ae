#!/usr/bin/env bash
# coditect from Python beside AutoGen-core and the plain-asyncio floor, in one
# run: builds the release wheel, installs it and autogen-core (PyPI) into a
# bench venv under target/, runs each workload in its own process REPS times
# (default 3) and prints the medians side by side.
# Run from the repository root: benches/python/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${PYTHON:-python3}"
venv="target/py-bench-venv"
reps="${REPS:-3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" "autogen-core==0.7.5"
fi
(cd coditect-py && ../"$venv"/bin/maturin build --release --out ../target/py-bench-wheels)
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps target/py-bench-wheels/coditect-*.whl
out="target/py-bench-results"; mkdir -p "$out"; : > "$out/all.txt"
for w in fanout latency; do
  for i in $(seq "$reps"); do
    for s in coditect_bench asyncio_baseline autogen_core_bench; do
      "$venv/bin/python" "benches/python/$s.py" "$w" | tee -a "$out/all.txt"
    done
  done
done
for i in $(seq "$reps"); do
  "$venv/bin/python" benches/python/coditect_bench.py fanout-await | tee -a "$out/all.txt"
  "$venv/bin/python" benches/python/coditect_bench.py rust | tee -a "$out/all.txt"
done
"$venv/bin/python" benches/python/summarize.py "$out/all.txt"
