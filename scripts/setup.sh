#!/bin/sh
# Set up cloudlet on Debian 12 as root: host packages, a virtualenv, the package itself.
#   scripts/setup.sh          what running VMs needs
#   scripts/setup.sh --dev    plus the test and lint tools
set -eu
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
# qemu: the hypervisors (x86 and, emulated, ARM); apt, dpkg, e2fsprogs, gzip, mmdebstrap:
# build images from Debian packages; openssh-client: `cloudlet ssh`; cpio: tests read
# the initramfs back with GNU cpio; dnsmasq-base, nftables, iproute2: virtual networks
# (dnsmasq without its system service, one per network); lvm2, thin-provisioning-tools:
# LVM pools with thin volumes; passt: the default user-mode NAT without a way from
# the guest to the host's loopback services (QEMU 7.2's slirp maps its gateway there)
packages="qemu-system-x86 qemu-system-arm qemu-utils python3 python3-venv e2fsprogs gzip
 ca-certificates mmdebstrap openssh-client cpio dnsmasq-base nftables iproute2
 lvm2 thin-provisioning-tools passt"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# The image builder runs `apt-get download`, which needs package lists.
if [ -n "$missing" ] || [ -z "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial -e auxfiles)" ]; then
    apt-get update -qq
fi
if [ -n "$missing" ]; then
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--dev" ]; then
    .venv/bin/pip install -q -r requirements-dev.lock
else
    .venv/bin/pip install -q -r requirements.lock
fi
.venv/bin/pip install -q --no-deps -e .
# Bytecode for the dependencies and cloudlet, as an ordinary pip install leaves it: where
# PYTHONDONTWRITEBYTECODE is set, every command would compile SQLAlchemy, pydantic and
# Typer again (seconds on a small host).
.venv/bin/python -m compileall -q -j 0 .venv/lib src >/dev/null || true
echo "cloudlet is set up: .venv/bin/cloudlet"
