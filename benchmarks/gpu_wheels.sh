#!/usr/bin/env bash
# The wheels the GPU machine lacks, for benchmarks/gpu_session.sh: run here (with network) before the
# device call, which then carries .whl/ (git-ignored). The GPU image has Python 3.12, torch, numpy,
# pandas, opencv-python-headless, safetensors, tensorboard, tqdm, pyyaml, matplotlib, cloudpickle
# (/work/.library/device/KINDS.md); it lacks pydantic and its parts, gymnasium and ale-py (the eval
# part), isal, and this package itself (its wheel gives `jowa` its entry point and version metadata;
# the code that runs is the checkout's, first on PYTHONPATH). The report's rliable is not needed there.
# Versions are the ones this project's venv runs. The device's working tree is capped at 64 MiB: the
# total is printed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing-extensions==4.16.0 gymnasium==1.4.0 farama-notifications==0.0.4 ale-py==0.12.1 isal==1.9.1
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl . && rm -rf build
ls -l .whl
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "wheels: $((bytes / 1024)) KiB in .whl/ (the device's tree is capped at 64 MiB with the checkout)"
[ "$bytes" -lt $((48 * 1024 * 1024)) ] || { echo "wheels over 48 MiB: too large to carry" >&2; exit 1; }
