# The devices QEMU is built with (configure --without-default-devices --with-devices-x86_64=exitlat;
# qemu/build.sh copies this file to configs/devices/x86_64-softmmu/exitlat.mak). Everything not
# named here, or selected by what is named, is left out: no VGA, NICs, USB devices, sound, HPET,
# IOMMUs, q35, isapc, microvm. Each line is what exitlat starts (exitlat/qemu.py for bench,
# exitlat/selftest/host.py for the emulated host); tests/test_guest_tcg.py and tests/test_e2e.py
# boot the guest on this build.

# -machine pc (i440FX + PIIX: the ISA bus with the 16550 UART behind -serial, the i8254/i8259,
# the RTC, fw_cfg with DMA for -kernel/-initrd, the PIIX4 ACPI PM device).
CONFIG_I440FX=y
# -device isa-debugcon (the S port of cases 2, 4 and 6)
CONFIG_ISA_DEBUG=y
# -device virtio-blk-pci (bench's sample disk; the emulated host's output disk)
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_BLK=y
# -device pci-testdev (the mmio_* kinds of the exit catalogue, only in VMs whose plan has one): a
# memory BAR whose writes exit to QEMU or complete in KVM through an ioeventfd
CONFIG_PCI_TESTDEV=y
