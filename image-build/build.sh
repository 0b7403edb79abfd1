#!/usr/bin/env bash
# Builds the virtual router appliance: a compressed, bootable qcow2 of a minimal Debian 12 with
# vr-agent, its systemd units, dnsmasq-base, haproxy, keepalived, conntrackd, nftables, conntrack
# and openssh-server.
#
#   image-build/build.sh [--agent PATH] [--mn-packages DIR] [--out FILE]
#
# --agent        the vr-agent binary to install (default: target/release/vr-agent, built if missing)
# --mn-packages  optional folder with the management node's own agent packages, laid out as
#                virtualrouter/*.tar.gz and appliancevm/*.tar.gz; they are placed where the
#                node's md5 check reads them (protocol 5.4), so it does not reinstall its old agent.
# --out          the image (default: target/image/vr-appliance.qcow2)
#
# No loop devices, grub-install or KVM: mmdebstrap into a folder, mkfs.ext4 -d for the root
# partition, a FAT boot partition with SYSLINUX, sfdisk + dd to assemble, qemu-img to compress.
# Reproducible up to named timestamps: everything is dated SOURCE_DATE_EPOCH (the commit time)
# and the filesystem UUIDs and seeds are fixed; see README.md for what still differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
agent=""
mn_packages=""
out="$repo/target/image/vr-appliance.qcow2"
while [ $# -gt 0 ]; do
  case "$1" in
    --agent) agent=$2; shift 2 ;;
    --mn-packages) mn_packages=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "build.sh needs root (mmdebstrap --mode=root)" >&2; exit 1; }
# What the build needs (mmdebstrap, syslinux, mtools, faketime, qemu-img, ...); idempotent:
# installs only what is missing.
bash "$here/deps.sh"
if [ -z "$agent" ]; then
  agent="$repo/target/release/vr-agent"
  (cd "$repo" && cargo build --release --locked)
fi
[ -x "$agent" ] || { echo "no agent binary at $agent" >&2; exit 1; }

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
# mkfs.ext4 and syslinux stamp the current time into the filesystems they write: run them
# with the clock frozen at SOURCE_DATE_EPOCH.
frozen() { TZ=UTC faketime -f "$(TZ=UTC date -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d %H:%M:%S')" "$@"; }
root_uuid=6f1e3a52-7b0c-4d2e-9a41-5c3b2d1e0f72
boot_volid=5652a901
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
started=$(date +%s)

work=$(mktemp -d /var/tmp/vr-image.XXXXXX)
cleanup() { if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
rootfs=$work/rootfs

echo "== mmdebstrap (bookworm, minbase)"
mmdebstrap --mode=root --variant=minbase --quiet \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd,systemd-sysv,udev,dbus,iproute2,nftables,dnsmasq-base,haproxy,keepalived,conntrackd,iputils-ping,conntrack,openssh-server,netbase,procps,kmod,ifupdown- \
  --customize-hook='chroot "$1" update-initramfs -u -k all >/dev/null' \
  bookworm "$rootfs" "$mirror"

echo "== install vr-agent and units"
install -D -m 0755 "$agent" "$rootfs/usr/bin/vr-agent"
install -D -m 0644 "$repo/systemd/vr-agent.service" "$rootfs/etc/systemd/system/vr-agent.service"
install -D -m 0644 "$repo/systemd/vr-agent-bootstrap.service" "$rootfs/etc/systemd/system/vr-agent-bootstrap.service"
install -D -m 0644 "$here/files/vr-ssh-hostkeys.service" "$rootfs/etc/systemd/system/vr-ssh-hostkeys.service"
install -D -m 0644 "$here/files/sysctl.conf" "$rootfs/etc/sysctl.d/60-vr-router.conf"
install -D -m 0644 "$repo/README.md" "$rootfs/usr/share/doc/vr-agent/README.md"
systemctl --root="$rootfs" enable vr-agent-bootstrap.service vr-agent.service vr-ssh-hostkeys.service serial-getty@ttyS0.service >/dev/null
# dnsmasq's own system service is not installed (dnsmasq-base); the agent runs its own.
# haproxy's is: mask it, the agent runs its own haproxy (master-worker, its own directory).
systemctl --root="$rootfs" mask haproxy.service >/dev/null
# keepalived's and conntrackd's too: the agent runs both for router HA, with its own files.
systemctl --root="$rootfs" mask keepalived.service conntrackd.service >/dev/null
systemd-analyze verify --root="$rootfs" /etc/systemd/system/vr-agent.service /etc/systemd/system/vr-agent-bootstrap.service

echo "== system settings"
echo vr-appliance > "$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vr-appliance\n' > "$rootfs/etc/hosts"
echo "UUID=$root_uuid / ext4 defaults,errors=remount-ro 0 1" > "$rootfs/etc/fstab"
: > "$rootfs/etc/machine-id"               # generated at first boot
rm -f "$rootfs"/etc/ssh/ssh_host_*           # per-instance keys, made at first boot
if [ -n "${DEBUG_ROOT_LOGIN:-}" ]; then chroot "$rootfs" usermod -p '' root; else chroot "$rootfs" usermod -p '*' root; fi  # no root password: key access only
install -d -m 0700 "$rootfs/root/.ssh"
install -d -m 0755 "$rootfs/var/lib/zstack"
cat > "$rootfs/etc/ssh/sshd_config.d/vr-agent.conf" <<'SSHD'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
SSHD
if [ -n "$mn_packages" ]; then
  echo "== management node packages from $mn_packages"
  for f in "$mn_packages"/virtualrouter/*.tar.gz; do
    [ -e "$f" ] || continue
    install -D -m 0644 "$f" "$rootfs/var/lib/zstack/virtualrouter/$(basename "$f")"
    install -D -m 0644 "$f" "$rootfs/var/lib/zstack/virtualrouter/package/$(basename "$f")"
  done
  for f in "$mn_packages"/appliancevm/*.tar.gz; do
    [ -e "$f" ] || continue
    install -D -m 0644 "$f" "$rootfs/var/lib/zstack/appliancevm/$(basename "$f")"
    install -D -m 0644 "$f" "$rootfs/var/lib/zstack/appliancevm/package/$(basename "$f")"
  done
fi
# Logs, caches and apt lists are not part of the image.
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
  "$rootfs"/var/cache/ldconfig/aux-cache "$rootfs"/var/lib/dbus/machine-id
find "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"

echo "== boot partition (SYSLINUX)"
kernel=$(cd "$rootfs/boot" && ls vmlinuz-* | sort | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
cat > "$work/syslinux.cfg" <<CFG
DEFAULT vr
PROMPT 0
TIMEOUT 0
LABEL vr
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0 quiet
CFG
boot_mib=96
frozen mkfs.vfat -C -n VRBOOT -i "$boot_volid" --invariant "$work/boot.img" $((boot_mib * 1024)) >/dev/null
frozen mcopy -m -i "$work/boot.img" "$rootfs/boot/$kernel" ::/vmlinuz
frozen mcopy -m -i "$work/boot.img" "$rootfs/boot/$initrd" ::/initrd.img
frozen mcopy -m -i "$work/boot.img" "$work/syslinux.cfg" ::/syslinux.cfg
frozen syslinux --install "$work/boot.img"

echo "== root partition (ext4)"
root_mib=$(( $(du -sm "$rootfs" | cut -f1) * 13 / 10 + 256 ))
frozen mkfs.ext4 -q -F -d "$rootfs" -U "$root_uuid" -E "hash_seed=$root_uuid,root_owner=0:0" -L vr-root \
  -T default "$work/root.img" "${root_mib}M"
# mkfs.ext4 -d copies each inode's change and access times (ctime, atime) from the build
# folder, where the kernel set them during this build: pin them to SOURCE_DATE_EPOCH.
stamp=$(TZ=UTC date -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M%S)
{
  echo "sif / ctime $stamp"
  echo "sif / atime $stamp"
  (cd "$rootfs" && find . -xdev -mindepth 1 -printf '%P\n') |
    sed "s|^\(.*\)\$|sif \"/\1\" ctime $stamp\nsif \"/\1\" atime $stamp|"
} > "$work/ctime.debugfs"
frozen debugfs -w -f "$work/ctime.debugfs" "$work/root.img" > "$work/ctime.log" 2>&1
if grep -v '^sif \|^debugfs ' "$work/ctime.log" | grep -q .; then
  echo "debugfs could not pin every ctime:" >&2; grep -v '^sif \|^debugfs ' "$work/ctime.log" | head >&2; exit 1
fi

echo "== disk"
disk=$work/disk.raw
total_mib=$((1 + boot_mib + root_mib))
truncate -s "${total_mib}M" "$disk"
sfdisk --quiet "$disk" <<PARTS
label: dos
label-id: 0x7672a9e1
start=1MiB, size=${boot_mib}MiB, type=6, bootable
start=$((1 + boot_mib))MiB, type=83
PARTS
dd if="$work/boot.img" of="$disk" bs=1M seek=1 conv=notrunc status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((1 + boot_mib)) conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none

mkdir -p "$(dirname "$out")"
qemu-img convert -c -O qcow2 "$disk" "$out.tmp"
mv "$out.tmp" "$out"
size=$(stat -c %s "$out")
echo "image: $out"
echo "image size: $size bytes ($((size / 1024 / 1024)) MiB)"
echo "agent md5 inside: $(md5sum "$rootfs/usr/bin/vr-agent" | cut -d' ' -f1)"
echo "build time: $(( $(date +%s) - started )) s"
