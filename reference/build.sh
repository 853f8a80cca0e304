#!/bin/bash
# Build kvm-unit-tests' x86/vmexit.flat, the reference exitlat runs beside its cases
# (`invoke bench --reference`; exitlat/reference/), inside the builder container.
#   /sources/kvm-unit-tests.tar.gz   the pinned tag (pins.yaml: sha256 and git tree id)
#   /stage/out/vmexit.flat           the test binary, booted with -kernel by the project's QEMU
#   /stage/out/kvm-unit-tests.version  the tag and the tree's config (what the bundle names)
set -euo pipefail
: "${SOURCE_DATE_EPOCH:?}"
SRC=/work/kvm-unit-tests OUT=/stage/out
rm -rf "$SRC" "$OUT"; mkdir -p "$SRC" "$OUT"
tar -xzf /sources/kvm-unit-tests.tar.gz -C "$SRC" --strip-components=1
cd "$SRC"
echo "== configure"
./configure --arch=x86_64
echo "== make x86/vmexit.flat"
# The file names compiled into the binary (assert messages) are relative: no build path leaks in.
make -j"$(nproc)" x86/vmexit.flat
cp x86/vmexit.flat "$OUT/vmexit.flat"
grep -E '^(ARCH|PROCESSOR|CC|TARGET)=' config.mak > "$OUT/kvm-unit-tests.config" || true
echo "== $(sha256sum "$OUT/vmexit.flat")"
