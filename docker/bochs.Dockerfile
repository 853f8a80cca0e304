# The emulated VT-x machine of `invoke selftest --vendor intel`: Debian's Bochs (its CPU model
# corei7_skylake_x has VMX with EPT, VPID and unrestricted guest), its BIOS, and the tools that
# make L1's boot CD (xorriso, isolinux). The Bochs packages are checked against the sha256 of
# pins.yaml (emulated_host.bochs.packages) before they are installed; their libraries come from the
# pinned base's suite and are recorded in /etc/exitlat-packages.txt.
#
# Debian's source tarball of Bochs is not reachable from our CI (only the binary packages are), so
# this is Debian's build: it has no `nogui` display; the selftest uses its RFB display with a
# client of its own (the term display sleeps 1 ms whenever the emulated CPU halts).
ARG BASE
FROM ${BASE}
ARG SUITE=bookworm
ARG MIRROR=http://deb.debian.org/debian
# "name=version" of each pinned package, and "sha256  file" lines for `sha256sum -c`
ARG PACKAGES
ARG SHA256S
ARG TOOLS
ENV DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 TZ=UTC
RUN printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > /etc/apt/sources.list \
 && echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/exitlat-unsafe-io \
 && apt-get update \
 && apt-get install -y --no-install-recommends --download-only $PACKAGES \
 && cd /var/cache/apt/archives && printf '%s\n' "$SHA256S" | tr ';' '\n' | sha256sum -c - \
 && apt-get install -y --no-install-recommends $PACKAGES $TOOLS \
 && dpkg-query -W -f '${Package}=${Version}\n' > /etc/exitlat-packages.txt \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man /usr/share/locale \
 && test -x /usr/bin/bochs-bin && test -f /usr/lib/ISOLINUX/isolinux.bin \
 && test -f /usr/lib/syslinux/modules/bios/ldlinux.c32 && mkdir -m 1777 /work
