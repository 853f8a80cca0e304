#!/bin/bash
# Build a self-contained QEMU inside the builder container.
#   /sources/qemu.tar, /sources/seabios.deb, /sources/qemu-firmware.deb   pinned inputs
#   /repo (read-only)   /stage/out/qemu   the install: bin/, lib/ (bundled shared libraries),
#   share/qemu/ (firmware), and bin/qemu-system-x86_64-wrapper... see below.
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
SRC=/work/qemu BLD=/work/qemu-build OUT=/stage/out PREFIX=/opt/exitlat-qemu
rm -rf "$OUT"; mkdir -p "$SRC" "$BLD" "$OUT"
tar -xf /sources/qemu.tar -C "$SRC" --strip-components=1
# The pinned meson and pycotap wheels, where QEMU's offline mkvenv looks for them.
mkdir -p "$SRC/python/wheels"; cp /sources/*.whl "$SRC/python/wheels/"
# The +ds tarball has no edk2 images, but meson would still try to unpack them whenever bzip2
# exists (as Debian's own build patches out). x86 with -kernel boots through SeaBIOS: skip them.
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$SRC/meson.build"
grep -q '^    unpack_edk2_blobs = false$' "$SRC/meson.build"
# One fix to TCG's SVM (never used under KVM; the emulated AMD-V host of `invoke selftest` runs
# on it): a MOV to CR8 in a nested guest with a virtual interrupt pending (V_IRQ: KVM asked for an
# interrupt window while the guest had IF=0) calls cpu_interrupt() without the BQL, and under
# thread=multi QEMU aborts on tcg_handle_interrupt's assertion (seen: L1 killed by SIGABRT in the
# mov_to_cr8 kind's batch). Take the BQL there, as the branch above it already does.
H="$SRC/target/i386/tcg/system/misc_helper.c"
sed -i 's/^            cpu_interrupt(cs, CPU_INTERRUPT_VIRQ);$/            bql_lock(); cpu_interrupt(cs, CPU_INTERRUPT_VIRQ); bql_unlock(); \/\* exitlat \*\//' "$H"
[ "$(grep -c '^            bql_lock(); cpu_interrupt(cs, CPU_INTERRUPT_VIRQ); bql_unlock(); /\* exitlat \*/$' "$H")" = 1 ]
# The device configuration (configure looks for it under configs/devices/<arch>-softmmu/).
cp /repo/qemu/devices-x86_64.mak "$SRC/configs/devices/x86_64-softmmu/exitlat.mak"
cd "$BLD"
mapfile -t ARGS < <(sed -e 's/#.*//' -e '/^\s*$/d' /repo/qemu/configure.args)
echo "== configure ${ARGS[*]}"
"$SRC/configure" --prefix="$PREFIX" "${ARGS[@]}" \
  --extra-cflags="-ffile-prefix-map=$SRC=qemu -ffile-prefix-map=$BLD=qemu-build"
echo "== building qemu-system-x86_64 ($(nproc) jobs)"
# Only the emulator: `make` alone would also build QEMU's unit tests and qtests (a third of the time).
make -j"$(nproc)" qemu-system-x86_64
I=/work/install
mkdir -p "$I/bin" "$I/share/qemu"
strip -o "$I/bin/qemu-system-x86_64" qemu-system-x86_64
# Firmware: the +ds tarball ships none; take SeaBIOS and QEMU's option ROMs from Debian's packages.
mkdir -p /work/deb "$I/share/qemu"
dpkg-deb -x /sources/seabios.deb /work/deb
dpkg-deb -x /sources/qemu-firmware.deb /work/deb
for f in bios-256k.bin; do cp -L "/work/deb/usr/share/seabios/$f" "$I/share/qemu/$f"; done
for f in linuxboot_dma.bin linuxboot.bin kvmvapic.bin multiboot_dma.bin; do
  src=$(find /work/deb/usr/share -name "$f" | head -1)
  [ -n "$src" ] && cp -L "$src" "$I/share/qemu/$f"
done
# Bundle every shared library (glibc and its loader too), so QEMU runs on any x86_64 Linux.
mkdir -p "$I/lib"
ldd "$I/bin/qemu-system-x86_64" | awk '/=> \//{print $3} /^[ \t]*\/lib64\/ld-linux/{print $1}' \
  | sort -u | while read -r lib; do cp -L "$lib" "$I/lib/"; done
cat > "$I/bin/qemu" <<'WRAP'
#!/bin/sh
# Runs the bundled QEMU with the bundled loader and libraries; the process is QEMU itself.
here=$(dirname "$(readlink -f "$0")")
exec "$here/../lib/ld-linux-x86-64.so.2" --library-path "$here/../lib" \
  "$here/qemu-system-x86_64" -L "$here/../share/qemu" "$@"
WRAP
chmod 0755 "$I/bin/qemu"
[ -e "$I/lib/ld-linux-x86-64.so.2" ] || { echo "the dynamic loader was not bundled"; exit 1; }
find "$I" -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
cp -a "$I" "$OUT/qemu"
"$OUT/qemu/bin/qemu" --version | head -1 > "$OUT/qemu.version"
echo "== $(cat "$OUT/qemu.version") done"
