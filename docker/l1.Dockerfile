# The userland of the emulated AMD-V host ("L1") of `invoke selftest`: the pinned Debian base plus
# Python and exitlat's runtime dependencies at the exact versions of pins.yaml (emulated_host.packages).
# It is exported as an uncompressed initramfs (exitlat/selftest/image.py), so everything L1 does
# not need is removed: the smaller the archive, the faster L1 boots under TCG.
ARG BASE
FROM ${BASE}
ARG SUITE=bookworm
ARG MIRROR=http://deb.debian.org/debian
ARG PACKAGES
ENV DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 TZ=UTC
RUN printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > /etc/apt/sources.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends $PACKAGES \
 && dpkg-query -W -f '${Package}=${Version}\n' > /etc/exitlat-packages.txt \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/* \
           /usr/share/doc /usr/share/man /usr/share/info /usr/share/locale /usr/share/i18n \
           /usr/share/zoneinfo /usr/share/common-licenses /usr/lib/python3/dist-packages/numpy/*/tests \
           /usr/lib/python3/dist-packages/numpy/tests /usr/lib/python3.11/test \
 && python3 -c 'import numpy, yaml, jsonschema, tabulate; print("L1 userland ok")'
