#!/bin/bash
# Build a static busybox inside the builder container (/sources/busybox.tar, /repo, /stage).
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
export KCONFIG_NOTIMESTAMP=1   # else the build time lands in the banner
SRC=/stage/src OUT=/stage/out
rm -rf "$SRC" "$OUT"; mkdir -p "$SRC" "$OUT"
tar -xf /sources/busybox.tar -C "$SRC" --strip-components=1
cd "$SRC"
# busybox's kconfig ignores KCONFIG_ALLCONFIG: start from allnoconfig, set the fragment's options,
# and let oldconfig settle the rest.
make -s allnoconfig >/dev/null
grep '^CONFIG_' /repo/guest/busybox.config | while IFS='=' read -r key value; do
  sed -i "/^# $key is not set\$/d; /^$key=/d" .config
  echo "$key=$value" >> .config
done
(yes "" || true) | make -s oldconfig >/dev/null
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
