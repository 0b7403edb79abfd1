#!/usr/bin/env bash
# Installs what building and boot-testing the appliance image needs (Debian 12, as root).
# qemu-system-x86 and qemu-utils come from bookworm-backports together: the machine's
# qemu-utils 10 is a backport, and bookworm's qemu-system-x86 7.2 would remove it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
list=/etc/apt/sources.list.d/vr-agent-backports.sources
if [ "$codename" = bookworm ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$list" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update
fi
pkgs=(faketime mmdebstrap syslinux syslinux-common mtools dosfstools fdisk e2fsprogs openssh-client curl python3 systemd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=""
# A fresh machine may have no package lists yet: update once before the first install.
update_once() { [ -n "$updated" ] || { apt-get update; updated=1; }; }
if ! command -v qemu-system-x86_64 >/dev/null; then
  if [ "$codename" = bookworm ]; then
    update_once
    apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
  else
    missing+=(qemu-system-x86 qemu-utils)
  fi
fi
if ((${#missing[@]})); then
  update_once
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
