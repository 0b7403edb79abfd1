#!/usr/bin/env bash
# Runs every test of vr-agent, as root on a Debian machine:
#  1. unit, golden-file and network-namespace integration tests (cargo test, all targets);
#  2. the appliance: builds the qcow2 image with the release agent and boots it under QEMU,
#     driving it as the management node would (image-build/boot-test.py).
# Installs the system packages first. Set VR_SKIP_IMAGE=1 to run only step 1 while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the tests create network namespaces and build an image: run as root" >&2
  exit 1
fi
bash scripts/deps.sh
cargo test --locked --all-targets
if [ -n "${VR_SKIP_IMAGE:-}" ]; then
  echo "VR_SKIP_IMAGE set: image build and boot test skipped"
  exit 0
fi
bash image-build/deps.sh
cargo build --release --locked
bash image-build/build.sh --agent target/release/vr-agent --out target/image/vr-appliance.qcow2
timeout 1200 python3 image-build/boot-test.py target/image/vr-appliance.qcow2 target/release/vr-agent
