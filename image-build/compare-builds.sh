#!/usr/bin/env bash
# Builds the image twice from the same commit and reports what differs, to check the build's
# reproducibility. Usage: image-build/compare-builds.sh [--agent PATH]  (root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /var/tmp/vr-compare.XXXXXX)
trap 'rm -rf "$out" /var/tmp/vr-image.*' EXIT
for i in 1 2; do
  KEEP_WORK=1 bash "$here/build.sh" "$@" --out "$out/$i.qcow2" > "$out/$i.log" 2>&1
  grep "work dir kept" "$out/$i.log" | awk '{print $4}' > "$out/$i.work"
  sleep 2
done
a=$(cat "$out/1.work"); b=$(cat "$out/2.work")
echo "files whose content differs:"
diff -rq --no-dereference "$a/rootfs" "$b/rootfs" | grep -v 'character special file' || echo "  none"
echo "files whose mtime differs:"
diff <(cd "$a/rootfs" && find . -xdev -printf '%p %T@\n' | sort) \
     <(cd "$b/rootfs" && find . -xdev -printf '%p %T@\n' | sort) || true
echo "boot partition: $(cmp "$a/boot.img" "$b/boot.img" >/dev/null && echo identical || echo differs)"
echo "root partition: $(cmp -l "$a/root.img" "$b/root.img" | wc -l) bytes differ"
echo "qcow2 images: $(cmp "$out/1.qcow2" "$out/2.qcow2" >/dev/null && echo identical || echo differ)"
md5sum "$out/1.qcow2" "$out/2.qcow2" | sed 's/^/  /' 
debugfs -R "stat /etc/hostname" "$a/root.img" 2>/dev/null | grep -E 'time' | sed 's/^/  build 1 /'
debugfs -R "stat /etc/hostname" "$b/root.img" 2>/dev/null | grep -E 'time' | sed 's/^/  build 2 /'
diff <(dumpe2fs -h "$a/root.img" 2>/dev/null) <(dumpe2fs -h "$b/root.img" 2>/dev/null) | sed 's/^/  superblock /' || true
