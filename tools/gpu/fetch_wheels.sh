#!/usr/bin/env bash
# Wheels the device lacks (its torch 2.11 / Triton 3.6 image has no diffusers; diffusers,
# importlib_metadata and expecttest ran the end-to-end benchmarks before, zipp is
# importlib_metadata's own dependency): fetched into .whl (git-ignored). Name `.whl` in the
# device call's `carry` and start its command with the prefix printed at the end
# (/work/.library/device/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for pkg in diffusers==0.42.1 importlib_metadata zipp expecttest; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg"
done
ls -la .whl
echo 'device command prefix: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; export PYTHONUNBUFFERED=1;'
