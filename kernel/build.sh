#!/bin/bash
# Build the guest kernel inside the builder container.
#   /sources/linux.tar  the pinned source tarball    /repo  this repository (read-only)
#   /kernel             the kernel tree (src/, obj/), kept for the module build   /stage/out  outputs
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@${SOURCE_DATE_EPOCH}" '+%Y-%m-%d %H:%M:%S UTC')"
export KBUILD_BUILD_USER=exitlat KBUILD_BUILD_HOST=exitlat KBUILD_BUILD_VERSION=1
SRC=/kernel/src OBJ=/kernel/obj OUT=/stage/out
rm -rf "$SRC" "$OBJ" "$OUT"; mkdir -p "$SRC" "$OBJ" "$OUT"
echo "== unpacking $(basename "$(readlink -f /sources/linux.tar)")"
tar -xf /sources/linux.tar -C "$SRC" --strip-components=1
echo "== configuring: allnoconfig + kernel/exitlat.config"
make -s -C "$SRC" O="$OBJ" KCONFIG_ALLCONFIG=/repo/kernel/exitlat.config allnoconfig
make -s -C "$SRC" O="$OBJ" olddefconfig
# Every option the fragment names must have survived; a silent drop would change the guest.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$OBJ/.config" || { echo "config lost: $line"; missing=1; } ;;
    "# CONFIG_"*" is not set") sym=${line#\# }; sym=${sym%% *}
      ! grep -q "^${sym}=" "$OBJ/.config" || { echo "config lost: $line"; missing=1; } ;;
  esac
done < /repo/kernel/exitlat.config
[ "$missing" = 0 ] || { echo "kernel/exitlat.config: options above did not take effect"; exit 1; }
echo "== building bzImage and modules ($(nproc) jobs)"
make -C "$SRC" O="$OBJ" -j"$(nproc)" bzImage modules
cp "$OBJ/arch/x86/boot/bzImage" "$OUT/bzImage"
cp "$OBJ/.config" "$OUT/kernel.config"
make -s -C "$SRC" O="$OBJ" kernelrelease > "$OUT/kernel.release"
echo "== kernel $(cat "$OUT/kernel.release") done"
