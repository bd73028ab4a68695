#!/usr/bin/env bash
# gpu_engine_run.sh — run on the GPU machine (no internet) after gpu_engine_prep.sh filled <repo>/.whl:
# installs those wheels into .whl/site (not the system's site-packages; the system's torch is used),
# builds epd with CUDA and the torch ops extension into ${EPD_BUILD_DIR:-build-engines}, and runs the
# vLLM engine tests on the GPU (python/tests/test_engines_vllm_gpu.py: worker processes on one GPU,
# CUDA graph replay with changing counts, vLLM's own modular-kernel sweep with epd's prepare/finalize),
# logs under ${OUT:-.}.
# vLLM's compiled extensions (vllm/_C_stable_libtorch*.so, _moe_C*.so) cannot travel here (too big, built
# for torch 2.14), and vllm/platforms/cuda.py imports vllm._C_stable_libtorch unconditionally, in every
# process (vLLM's modular-kernel sweep spawns one per case). So where .whl/site/vllm has no
# _C_stable_libtorch*.so, this writes vllm/_C_stable_libtorch.py, which calls
# epd.vllm.testing.install_standins(): plain-torch ops where the compiled ones are missing,
# _C::silu_and_mul, _moe_C::moe_align_block_size and _moe_C::moe_sum (what TritonExperts calls).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-.}
build=${EPD_BUILD_DIR:-build-engines}
case $build in /*) ;; *) build=$PWD/$build ;; esac
py=${EPD_PYTHON:-python3}
mkdir -p "$out" .whl/site
tar -xJf .whl/vllm-py.tar.xz -C .whl/site  # vLLM's Python files (gpu_engine_prep.sh)
$py -m pip install --no-index --no-deps --target .whl/site .whl/*.whl > "$out/engines-pip.log" 2>&1
if compgen -G ".whl/site/vllm/_C_stable_libtorch*.so" > /dev/null; then
  rm -f .whl/site/vllm/_C_stable_libtorch.py
else
  cat > .whl/site/vllm/_C_stable_libtorch.py <<'EOF'
# Written by epd's python/tests/gpu_engine_run.sh: vLLM's compiled extension is not here; plain-torch
# stand-ins for the ops epd's tests use (epd.vllm.testing.install_standins; needs epd on PYTHONPATH).
from epd.vllm.testing import install_standins as _i; _i()
EOF
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DEPD_WITH_CUDA=ON -DEPD_WITH_TORCH=ON \
  -DEPD_PYTHON="$(command -v "$py")" > "$out/engines-cmake.log" 2>&1
cmake --build "$build" -j "$(nproc)" --target epd_engines_test_deps > "$out/engines-build.log" 2>&1
export EPD_BUILD_DIR=$build EPD_DAEMON=$build/daemon/epd EPD_VLLM_SDIST=$PWD/.whl/vllm-0.34.0
export PYTHONPATH=$PWD/python:$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}
$py -c "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tail -1 | tee "$out/engines-versions.log"
$py -m pytest -v -rs -p no:cacheprovider python/tests/test_engines_vllm_gpu.py 2>&1 | tee "$out/engines-gpu.log"
exit "${PIPESTATUS[0]}"
