# The build toolchain: the pinned Debian base plus the exact package versions from pins.yaml.
ARG BASE
FROM ${BASE}
ARG SUITE=bookworm
ARG MIRROR=http://deb.debian.org/debian
ARG PACKAGES
ENV DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 TZ=UTC
# force-unsafe-io: no fsync per unpacked file (the bootstrapped base has it already; a pulled one
# may not): much faster installs on slow storage drivers such as fuse-overlayfs.
RUN printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" > /etc/apt/sources.list \
 && echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/exitlat-unsafe-io \
 && apt-get update \
 && apt-get install -y --no-install-recommends $PACKAGES \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -m 1777 /work \
 && dpkg-query -W -f '${Package}=${Version}\n' > /etc/exitlat-packages.txt
