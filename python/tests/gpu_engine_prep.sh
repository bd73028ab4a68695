#!/usr/bin/env bash
# gpu_engine_prep.sh — run on a machine WITH internet (the CPU machine): puts into <repo>/.whl
# (git-ignored) what the vLLM engine tests need on the GPU machine, which has Python 3.12,
# torch 2.11 and no internet: vLLM 0.34.0's wheel (its pure-Python files; its compiled extension was
# built for torch 2.14 and does not travel: epd.vllm.testing.install_standins() stands in for the ops
# the tests' experts call, see gpu_engine_run.sh), the cp312 wheels of the dependencies its MoE modules import, and the
# vLLM sdist unpacked (its tests/kernels/moe/modular_kernel_tools sweep is not in the wheel).
# Then run python/tests/gpu_engine_run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
whl=.whl
mkdir -p "$whl"
pip=${PIP:-python3 -m pip}
# Every wheel for CPython 3.12 on x86_64 Linux, no dependencies resolved (the list is explicit).
$pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_27_x86_64 --platform any -d "$whl" \
  vllm==0.34.0 pydantic==2.14.4 pydantic-core annotated-types typing-inspection pyzmq==27.3.0 \
  msgspec==0.23.0 cbor2==6.3.0 pybase64==1.5.1 cachetools==8.0.3 cloudpickle==3.1.3 \
  py-cpuinfo==9.0.0 prometheus_client==0.26.0 llguidance xgrammar==0.2.9 \
  apache-tvm-ffi regex==2026.12.2 psutil==7.2.2 uvloop==0.23.0 pillow==13.0.0 \
  "transformers==5.22.2" "huggingface_hub" "tokenizers" "safetensors" aiohttp==3.14.5 \
  aiohappyeyeballs aiosignal frozenlist multidict yarl propcache attrs requests==2.34.2 \
  urllib3==2.8.0 idna charset-normalizer certifi pyyaml tqdm packaging==26.4 hf-xet
# The sdist, for vLLM's own modular-kernel sweep.
if [ ! -d "$whl/vllm-0.34.0/tests/kernels/moe/modular_kernel_tools" ]; then
  $pip download --no-deps --no-binary vllm -d "$whl" vllm==0.34.0
  tar -xzf "$whl/vllm-0.34.0.tar.gz" -C "$whl"
fi
# Fit the device tool's 64 MiB carry (about 24 MB in all): vLLM's Python and JSON files
# only, as $whl/vllm-py.tar.xz (about 8 MB; gpu_engine_run.sh unpacks it into $whl/site;
# the compiled extension, built for torch 2.14, and the bundled C++ headers and binaries
# stay out), only the sdist's MoE tests, and no wheel of a package the GPU image already
# has (its package list: /work/.library/device/KINDS.md).
for w in "$whl"/vllm-0.34.0-*.whl; do
  [ -f "$w" ] || continue
  tmp=$(mktemp -d)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$tmp"
  (cd "$tmp" && find vllm vllm-0.34.0.dist-info -type f \( -name "*.py" -o -name "*.json" -o -name py.typed \
     -o -path "*dist-info*" \) | tar -cJf - -T -) > "$whl/vllm-py.tar.xz"
  rm -rf "$tmp" "$w"
done
if [ -f "$whl/vllm-0.34.0.tar.gz" ]; then
  find "$whl/vllm-0.34.0" -mindepth 1 -maxdepth 1 ! -name tests -exec rm -rf {} +
  find "$whl/vllm-0.34.0/tests" -mindepth 1 -maxdepth 1 ! -name kernels -exec rm -rf {} +
  find "$whl/vllm-0.34.0/tests/kernels" -mindepth 1 -maxdepth 1 ! -name moe ! -name utils.py ! -name __init__.py \
    -exec rm -rf {} +
  rm -f "$whl/vllm-0.34.0.tar.gz"
fi
for present in aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict yarl propcache requests urllib3 idna \
               charset_normalizer certifi PyYAML pyyaml tqdm packaging pillow psutil regex uvloop transformers \
               huggingface_hub tokenizers safetensors hf_xet cloudpickle py_cpuinfo prometheus_client; do
  rm -f "$whl/$present"-[0-9]*.whl
done
du -sh "$whl"
