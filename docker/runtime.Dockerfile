# Where QEMU runs for `invoke bench`: the pinned base only. QEMU comes from the build folder,
# mounted read-only, with the shared libraries it needs bundled beside it.
ARG BASE
FROM ${BASE}
RUN mkdir -p /exitlat/artifacts /exitlat/run
WORKDIR /exitlat/run
