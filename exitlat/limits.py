"""Every bound on what a run may ask for, defined once. The CLI parsers (exitlat.bench, the
selftest), the run plan and the guest plan read them; the guest has its own copies of the two it
enforces (guest/module/exitlat_uapi.h: EXITLAT_MAX_ITERS, EXITLAT_BATCH_MAX), which a test holds
equal to these."""

MAX_ITERATIONS = 50_000_000     # iterations of one window (timed or traced): EXITLAT_MAX_ITERS
MAX_WARMUP = 10_000_000         # warm-up iterations before a timed window
MAX_BATCH = 100_000             # iterations per irq-off batch of a kernel loop: EXITLAT_BATCH_MAX
MAX_REPEAT = 100                # fresh VMs of one bench
MAX_CORE = 4095                 # the highest core number a --core may name
MAX_PORT = 0xFFFF               # I/O port space

# The selftest's windows run under nested emulation (~1 ms an exit): its own, tighter range.
SELFTEST_MIN_ITERATIONS = 100
SELFTEST_MAX_ITERATIONS = 200_000
