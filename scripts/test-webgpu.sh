#!/usr/bin/env bash
# The WebGPU suite (test/webgpu/*.test.ts): TensorFlow.js's webgpu backend on Dawn (the `webgpu` npm
# package) through SwiftShader, the software Vulkan driver Debian's `chromium` package ships: parity with
# the official DINOv2 outputs, the custom gradients, a training step of each objective against wasm,
# analysis and LOST against wasm, and the backend's adapter choice, limits and errors. The same code runs
# on GPUs through their Vulkan drivers; SwiftShader makes it testable on every CPU machine (slowly: these
# tests use the smallest models).
#
# scripts/test.sh runs this after the unit suite. With VITREG_INSTALL_CHROMIUM=1 (CI sets it) and root
# with apt-get, a missing chromium is installed first (~115 MB of .debs, ~410 MB on disk). Without
# SwiftShader, the webgpu packages or an adapter, it prints one line saying so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${VITREG_SWIFTSHADER_DIR:-/usr/lib/chromium}
icd=$dir/vk_swiftshader_icd.json
if [[ ! -f $icd && ${VITREG_INSTALL_CHROMIUM:-} == 1 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "webgpu suite: installing Debian's chromium for its SwiftShader Vulkan driver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "webgpu suite: not root or no apt-get, cannot install chromium"
  fi
fi
if [[ ! -f $icd ]]; then
  echo "webgpu suite skipped: no SwiftShader Vulkan driver at $icd (install Debian's chromium package, or set VITREG_SWIFTSHADER_DIR)"
  exit 0
fi
export LD_LIBRARY_PATH=$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export VK_ICD_FILENAMES=$icd

# One adapter must appear, else one line saying why and no tests.
adapter=$(node --conditions=vitreg-source --import tsx --input-type=module -e "
  const { setupWebGpu } = await import('@vitreg/core');
  try {
    const a = await setupWebGpu({ gpu: 0 });
    console.log('OK ' + a.name + ' (' + a.description + ')');
  } catch (e) {
    console.log('NO ' + e.message.split('\n')[0]);
  }
  process.exit(0);" 2>/dev/null | tail -n 1)
if [[ $adapter != OK* ]]; then
  echo "webgpu suite skipped: no WebGPU adapter through $icd: ${adapter#NO }"
  exit 0
fi
echo "webgpu suite on ${adapter#OK }"
shopt -s nullglob
files=(test/webgpu/*.test.ts)
# One file at a time. Dawn on SwiftShader has aborted a test process now and then under heavy load
# ("terminate called after throwing std::system_error: Invalid argument", SIGABRT, about one run in
# seven of backend.test.ts on a loaded 2-core machine, never a wrong number): such a file is run once
# more, saying so; an assertion failure, or a second abort, fails the suite.
status=0
for f in "${files[@]}"; do
  log=$(mktemp)
  if node --conditions=vitreg-source --import tsx --test "$f" 2>&1 | tee "$log"; [[ ${PIPESTATUS[0]} -eq 0 ]]; then
    rm -f "$log"; continue
  fi
  if grep -q "signal: 'SIGABRT'" "$log" && ! grep -q "ERR_ASSERTION" "$log"; then
    echo "webgpu suite: Dawn aborted the process of $f (SIGABRT); running it once more"
    node --conditions=vitreg-source --import tsx --test "$f" || status=1
  else
    status=1
  fi
  rm -f "$log"
done
exit $status
