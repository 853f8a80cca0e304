"""One bench run: the plan, QEMU in its container, the guest conversation, the VM results."""
