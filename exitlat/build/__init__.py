"""Pins → sources → Docker images → the build folder (kernel, initramfs, probes, QEMU)."""
