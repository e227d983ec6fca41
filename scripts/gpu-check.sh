#!/usr/bin/env bash
# scripts/gpu-check.sh [--budget SECONDS] [--dry-run] [--skip-install]
#
# The GPU checks and benches of the ONNX Runtime training engine, in a few minutes on any NVIDIA machine
# with the repository installed (`npm ci`). Prints one JSON line per case on stdout (notes on stderr):
#   gpu                 nvidia-smi's GPU, driver, memory, compute capability; CUDA / cuDNN / Vulkan libraries found
#   cuda-provider       ONNX Runtime's CUDA 12 provider files (fetched into node_modules/onnxruntime-node by its own
#                       install script when missing and the network allows; nothing is installed outside the repo)
#   engine-parity       (cuda, webgpu) tiny-supervised and tiny-dino, 10 steps on the device against the same run on
#                       ONNX Runtime's CPU engine: loss curves and the largest weight difference, within tolerance or not
#   train-step          (cuda, webgpu) ViT-S/16 reg4 224 batch 32 supervised, and the DINOv2 step (2x224 + 8x96),
#                       with PyTorch's same step on the GPU beside it where python3 has torch with CUDA (cuda only:
#                       PyTorch has no WebGPU device); on webgpu the supervised step also with the state on the
#                       host (--keep-on-device off): the cost of copying parameters in and gradients out each run
#   train-step bf16     PyTorch's autocast bf16 step on the GPU (the engine is float32 only: its line says so)
#   tfjs-node-gpu       the tfjs engine on @tensorflow/tfjs-node-gpu (CUDA 11.2), when it loads
#   gpu-memory          the peak of nvidia-smi's memory.used during each GPU case
# Each case whose provider, library or tool is missing prints one line with "skipped" and why. Every case
# runs under `timeout` with what is left of --budget (default 540 s), so the whole script ends inside a
# hard 10-minute limit; a case cut short prints "timed_out". --dry-run (no GPU needed) runs the same
# pipeline on the CPU with a tiny model, and the WebGPU cases through SwiftShader where Debian's chromium
# is installed: it checks the script, not a GPU. Exit status 0 unless the script itself is broken.
set -u
cd "$(dirname "$0")/.."
# The benches run as `vitreg train` does: Node with @vitreg/core's MALLOC_TUNABLES (the bins' first line);
# the PyTorch references without them (bench/_torch.ts).
export GLIBC_TUNABLES="glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"

BUDGET=540
DRY=0
INSTALL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --skip-install) INSTALL=0; shift ;;
    *) echo "gpu-check: unknown argument $1 (expected --budget SECONDS, --dry-run, --skip-install)" >&2; exit 2 ;;
  esac
done
START=$(date +%s)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null' EXIT

left() { echo $((BUDGET - ($(date +%s) - START))); }
# A JSON string of $1.
js() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\n\r' | cut -c1-400)"; }
line() { echo "{\"case\": $(js "$1"), $2}"; }
skip() { line "$1" "\"skipped\": $(js "$2")$( [ "$DRY" = 1 ] && echo ', "dry_run": true')"; }

HAVE_GPU=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && HAVE_GPU=1

# The peak of memory.used while a case runs (a background sampler).
SAMPLER=
sample_start() {
  [ "$HAVE_GPU" = 1 ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$TMP/mem" 2>/dev/null &
  SAMPLER=$!
}
sample_end() {
  [ -n "$SAMPLER" ] || return 0
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=
  local peak; peak=$(sort -n "$TMP/mem" | tail -1)
  [ -n "$peak" ] && line gpu-memory "\"during\": $(js "$1"), \"peak_used_mb\": $peak"
  return 0
}

# Runs one case: NAME LIMIT_S COMMAND...; passes its JSON lines through, or says it timed out / failed.
run_case() {
  local name=$1 want=$2; shift 2
  local t; t=$(left); t=$((t - 10))
  [ "$t" -gt "$want" ] && t=$want
  if [ "$t" -lt 20 ]; then skip "$name" "no time left in --budget $BUDGET s"; return; fi
  echo "gpu-check: $name (limit ${t}s): $*" >&2
  sample_start
  timeout -k 5 "$t" "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  sample_end "$name"
  grep '^{' "$TMP/out" | sed "s/^{/{\"check\": \"$name\", $( [ "$DRY" = 1 ] && echo '"dry_run": true, ')/"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    line "$name" "\"timed_out\": true, \"limit_s\": $t"
  elif [ "$rc" != 0 ]; then
    line "$name" "\"failed\": true, \"exit\": $rc, \"stderr\": $(js "$(grep -v '^\s*at ' "$TMP/err" | grep -v '^\s*$' | tail -3 | tr '\n' ' ')")"
  fi
}

# --- gpu -------------------------------------------------------------------------------------------
libs() { ldconfig -p 2>/dev/null | grep -o "$1[^ ]*" | head -1; }
# CUDA 12 / cuDNN 9 from Python wheels (nvidia-*-cu12), when the system has none: added to the library path.
for d in $(python3 -c 'import glob,site,sys; print(" ".join(sorted({p.rsplit("/",1)[0] for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/*/lib/lib*.so*")})))' 2>/dev/null); do
  case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) ;; *) export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
done
findlib() { libs "$1" || true; for d in ${LD_LIBRARY_PATH//:/ }; do ls "$d"/$1* 2>/dev/null | head -1; done | head -1; }
CUDART=$(findlib libcudart.so.12); CUBLAS=$(findlib libcublas.so.12); CUDNN=$(findlib libcudnn.so.9); VULKAN=$(findlib libvulkan.so.1)
NODE_OK=0
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null && [ -x node_modules/.bin/tsx ] && NODE_OK=1
# The python with torch (VITREG_PYTHON, python3, /usr/bin/python3), and whether it sees a CUDA device.
for p in "${VITREG_PYTHON:-}" python3 /usr/bin/python3; do
  [ -n "$p" ] && "$p" -c 'import torch' 2>/dev/null && { export VITREG_PYTHON=$(command -v "$p"); break; }
done
TORCH_CUDA=0
[ -n "${VITREG_PYTHON:-}" ] && "$VITREG_PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && TORCH_CUDA=1
if [ "$HAVE_GPU" = 1 ]; then
  IFS=, read -r NAME DRIVER MEM CC <<<"$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | head -1)"
  line gpu "\"name\": $(js "$NAME"), \"driver\": $(js "${DRIVER# }"), \"memory\": $(js "${MEM# }"), \"compute_capability\": $(js "${CC# }"), \"gpus\": $(nvidia-smi -L | wc -l), \"libcudart12\": $(js "$CUDART"), \"libcublas12\": $(js "$CUBLAS"), \"libcudnn9\": $(js "$CUDNN"), \"libvulkan1\": $(js "$VULKAN"), \"node\": $(js "$(node --version 2>/dev/null)"), \"torch_cuda\": $TORCH_CUDA"
else
  skip gpu "no NVIDIA GPU (nvidia-smi missing or finds none)"
fi
if [ "$NODE_OK" = 0 ]; then
  skip vitreg "no Node 20+ with this repository's node_modules here (run npm ci): only the PyTorch references run"
fi

# --- the devices to check, or their CPU stand-ins in a dry run ---------------------------------------
SMALL=()
if [ "$DRY" = 1 ]; then SMALL=(--model vit_micro_patch8_reg4 --patch 8 --size 32 --batch 8); fi
BENCH=(node --conditions=vitreg-source --import tsx bench/main.ts)

# --- CUDA ------------------------------------------------------------------------------------------
ORT_BIN=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
CUDA_OK=0
if [ "$DRY" = 1 ]; then
  CUDA_DEV=cpu; CUDA_OK=$NODE_OK
elif [ "$HAVE_GPU" = 0 ] || [ "$NODE_OK" = 0 ]; then
  skip cuda-provider "$( [ "$HAVE_GPU" = 0 ] && echo 'no NVIDIA GPU' || echo 'no Node / node_modules')"
else
  CUDA_DEV=cuda
  if [ ! -f "$ORT_BIN/libonnxruntime_providers_cuda.so" ] && [ "$INSTALL" = 1 ]; then
    # onnxruntime-node's own install script fetches the CUDA 12 provider into its bin folder (inside the repo).
    timeout -k 5 120 node node_modules/onnxruntime-node/script/install.js --onnxruntime-node-install=cuda12 >"$TMP/inst" 2>&1 ||
      echo "gpu-check: the CUDA provider download failed: $(tail -2 "$TMP/inst" | tr '\n' ' ')" >&2
  fi
  if [ ! -f "$ORT_BIN/libonnxruntime_providers_cuda.so" ]; then
    skip cuda-provider "ONNX Runtime's CUDA provider is not in $ORT_BIN (no network? run: node node_modules/onnxruntime-node/script/install.js --onnxruntime-node-install=cuda12)"
  elif [ -z "$CUDART" ] || [ -z "$CUBLAS" ] || [ -z "$CUDNN" ]; then
    skip cuda-provider "ONNX Runtime 1.30's CUDA provider needs CUDA 12 (libcudart.so.12, libcublas.so.12) and cuDNN 9 (libcudnn.so.9); found: '${CUDART}' '${CUBLAS}' '${CUDNN}' (pip install nvidia-cublas-cu12 nvidia-cuda-runtime-cu12 nvidia-cudnn-cu12 into this python, or the CUDA 12 toolkit)"
  else
    line cuda-provider "\"provider\": $(js "$ORT_BIN/libonnxruntime_providers_cuda.so"), \"ok\": true"
    CUDA_OK=1
  fi
fi
TORCH_DEV=cpu
[ "$TORCH_CUDA" = 1 ] && [ "$DRY" = 0 ] && TORCH_DEV=cuda
if [ "$CUDA_OK" = 1 ]; then
  if [ "$DRY" = 1 ]; then PARITY=(--reference tfjs --steps 3); else PARITY=(--steps 10); fi
  run_case engine-parity-cuda 150 "${BENCH[@]}" engine-parity --device "$CUDA_DEV" "${PARITY[@]}"
  run_case train-step-cuda 150 "${BENCH[@]}" train-step --engine onnxruntime --device "$CUDA_DEV" --torch-device "$TORCH_DEV" --steps 3 "${SMALL[@]}"
  run_case train-step-dinov2-cuda 180 "${BENCH[@]}" train-step --objective dinov2 --engine onnxruntime --device "$CUDA_DEV" --torch-device "$TORCH_DEV" --steps 2 \
    $( [ "$DRY" = 1 ] && echo --model vit_micro_patch8_reg4 --patch 8 --size 32 --local-size 16 --batch 4)
fi
if [ "$TORCH_CUDA" = 1 ] || [ "$DRY" = 1 ]; then
  if [ "$NODE_OK" = 1 ]; then
    run_case train-step-bf16-torch 90 "${BENCH[@]}" train-step --torch only --precision bf16 --torch-device "$TORCH_DEV" --steps 3 "${SMALL[@]}"
  else
    run_case train-step-torch-cuda 90 "$VITREG_PYTHON" bench/reference/torch_vit.py --case train-step --device cuda --batch 32 --size 224 \
      --patch 16 --no-pos-cls --no-batch-subset --drop-path 0.1 --iters 3
    run_case train-step-bf16-torch-cuda 90 "$VITREG_PYTHON" bench/reference/torch_vit.py --case train-step --device cuda --precision bf16 \
      --batch 32 --size 224 --patch 16 --no-pos-cls --no-batch-subset --drop-path 0.1 --iters 3
  fi
else
  skip train-step-bf16-torch "no python3 with torch and CUDA here"
fi
[ "$NODE_OK" = 1 ] && line train-step-bf16-engine "\"skipped\": \"the ONNX Runtime engine trains in float32 only (onnxRuntimeEngine refuses precision bf16 / fp16)\""

# --- WebGPU (Dawn on Vulkan) -------------------------------------------------------------------------
WEBGPU_OK=0
if [ "$NODE_OK" = 0 ]; then
  skip webgpu-provider "no Node / node_modules"
elif [ "$DRY" = 1 ]; then
  if [ -f /usr/lib/chromium/vk_swiftshader_icd.json ]; then
    export LD_LIBRARY_PATH="/usr/lib/chromium${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
    WEBGPU_OK=1
  else
    skip webgpu-provider "dry run: no SwiftShader (Debian's chromium) to stand in for a GPU"
  fi
elif [ -z "$VULKAN" ]; then
  skip webgpu-provider "no Vulkan loader (libvulkan.so.1): apt-get install libvulkan1 (NVIDIA's driver brings the ICD)"
else
  WEBGPU_OK=1
fi
if [ "$WEBGPU_OK" = 1 ]; then
  run_case engine-parity-webgpu 150 "${BENCH[@]}" engine-parity --device webgpu --preset tiny-supervised --steps $( [ "$DRY" = 1 ] && echo 2 || echo 10)
  run_case train-step-webgpu 150 "${BENCH[@]}" train-step --engine onnxruntime --device webgpu --torch off --steps 2 "${SMALL[@]}"
  # The same step with the state on the host (copied in and out each run): what those copies cost.
  run_case train-step-webgpu-host-state 120 "${BENCH[@]}" train-step --engine onnxruntime --device webgpu --keep-on-device off --torch off --steps 2 "${SMALL[@]}"
  run_case train-step-dinov2-webgpu 150 "${BENCH[@]}" train-step --objective dinov2 --engine onnxruntime --device webgpu --torch off --steps 2 \
    $( [ "$DRY" = 1 ] && echo --model vit_micro_patch8_reg4 --patch 8 --size 32 --local-size 16 --batch 4 --prototypes 1024)
fi

# --- tfjs-node-gpu ---------------------------------------------------------------------------------
if [ "$NODE_OK" = 1 ] && timeout 60 node -e "require('@tensorflow/tfjs-node-gpu')" >/dev/null 2>&1; then
  run_case train-step-tfjs-node-gpu 150 "${BENCH[@]}" train-step --engine tfjs --backend tensorflow-gpu --micro-batch 0 --torch off --steps 2 "${SMALL[@]}"
else
  skip train-step-tfjs-node-gpu "@tensorflow/tfjs-node-gpu does not load here (libtensorflow 2.9 for CUDA 11.2 / cuDNN 8.1 is fetched by its own install script)"
fi
line done "\"seconds\": $(($(date +%s) - START)), \"budget_s\": $BUDGET"
exit 0
