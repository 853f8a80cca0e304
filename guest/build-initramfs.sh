#!/bin/bash
# Build the guest probes (static user program + kernel module) and pack the initramfs, inside the
# builder container.  /repo  this repository (read-only)   /kernel  kernel tree (read-only)
#   /deps/busybox  busybox stage outputs (read-only)   /stage/out  outputs
#   /stage/gen  exitlat_instrs.h, generated from the instruction table (exitlat/build/guestgen.py)
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
OUT=/stage/out W=/work
rm -rf "$OUT"; mkdir -p "$OUT" "$W"
# Build from copies at fixed paths so no host path reaches the binaries.
# Only sources: a binary left in the working tree by a host build must never reach the image.
for d in probe module; do
  mkdir -p "$W/$d"
  find "/repo/guest/$d" -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' -o -name Makefile -o -name Kbuild \) \
    -exec cp {} "$W/$d/" \;
done
# The instruction ids, next to exitlat_uapi.h which includes it (the probe finds it there too).
cp /stage/gen/exitlat_instrs.h "$W/module/"
echo "== probe program"
make -C "$W/probe" CC=gcc
cp "$W/probe/exitlat-probe" "$OUT/"
echo "== kernel module against $(cat /kernel/obj/include/config/kernel.release)"
make -C /kernel/obj M="$W/module" modules
cp "$W/module/exitlat.ko" "$OUT/"

echo "== initramfs"
R="$W/rootfs"; mkdir -p "$R"
install -m 0755 /repo/guest/init "$R/init"
install -m 0755 /deps/busybox/busybox "$R/busybox"
install -m 0755 "$OUT/exitlat-probe" "$R/exitlat-probe"
install -m 0644 "$OUT/exitlat.ko" "$R/exitlat.ko"
cat /deps/busybox/busybox.version > "$R/versions"
# gen_init_cpio takes file mtimes from the files themselves: clamp them.
find "$R" -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
{
  for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /etc /lib /lib/modules /root; do
    echo "dir $d 0755 0 0"
  done
  echo "nod /dev/console 0600 0 0 c 5 1"
  echo "nod /dev/null 0666 0 0 c 1 3"
  echo "file /init $R/init 0755 0 0"
  echo "file /bin/busybox $R/busybox 0755 0 0"
  echo "file /bin/exitlat-probe $R/exitlat-probe 0755 0 0"
  echo "file /lib/modules/exitlat.ko $R/exitlat.ko 0644 0 0"
  echo "file /etc/exitlat-versions $R/versions 0644 0 0"
  while read -r applet; do
    [ "$applet" = busybox ] || echo "slink /bin/$applet busybox 0777 0 0"
  done < /deps/busybox/applets.txt
} | LC_ALL=C sort -k2,2 -u > "$W/initramfs.list"
/kernel/obj/usr/gen_init_cpio -t "$SOURCE_DATE_EPOCH" "$W/initramfs.list" > "$W/initramfs.cpio"
gzip -n -9 < "$W/initramfs.cpio" > "$OUT/initramfs.cpio.gz"
cp "$W/initramfs.list" "$OUT/initramfs.list"
sed -i "s|$R/|/|" "$OUT/initramfs.list"
echo "== initramfs: $(wc -l < "$W/initramfs.list") entries"
