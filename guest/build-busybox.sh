#!/bin/bash
# Build a static busybox inside the builder container (/sources/busybox.tar, /repo, /stage).
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
export KCONFIG_NOTIMESTAMP=1   # else the build time lands in the banner
SRC=/stage/src OUT=/stage/out
rm -rf "$SRC" "$OUT"; mkdir -p "$SRC" "$OUT"
tar -xf /sources/busybox.tar -C "$SRC" --strip-components=1
cd "$SRC"
make -s KCONFIG_ALLCONFIG=/repo/guest/busybox.config allnoconfig
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) grep -qxF "$line" .config || { echo "config lost: $line"; missing=1; } ;; esac
done < /repo/guest/busybox.config
[ "$missing" = 0 ] || { echo "guest/busybox.config: options above did not take effect"; exit 1; }
make -j"$(nproc)" busybox
cp busybox "$OUT/busybox"
./busybox --list > "$OUT/applets.txt"
./busybox 2>&1 | head -1 | sed 's/ multi-call binary.*//' > "$OUT/busybox.version"
echo "== $(cat "$OUT/busybox.version") done"
