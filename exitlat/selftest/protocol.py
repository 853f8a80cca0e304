"""What the host and L1 agree on: the console marker of L1's events, where L1 finds its
configuration and the exitlat package, and the raw disk L1 writes its results to. Constants only,
so that the L1 side (exitlat.selftest.inner) stays import-light."""

MARK = "exitlat-l1:"                     # every line of L1's own events on the console starts so
L1_REPO = "/exitlat"                     # where the package lives in L1 (its REPO_ROOT)
CONFIG_PATH = "/etc/exitlat-selftest.json"
DISK_MAGIC = b"EXITLAT-L1-OUT\0\0"       # then the tar's length (8 bytes, little endian), then the tar
DISK_BYTES = 256 << 20
