"""`invoke selftest`: the whole measurement chain on a real KVM, inside an emulated AMD-V host.

This machine class has no VMX/SVM, so exitlat's KVM path could never run here. QEMU's TCG emulates
AMD SVM: an "L1" Linux (the pinned Debian cloud kernel) booted under the project's own QEMU with
`-accel tcg -cpu EPYC,+svm,+npt` loads kvm_amd, and inside it `exitlat.bench` runs the project's
QEMU with `-accel kvm` on the exitlat guest ("L2"). Timings there are meaningless; what it proves is
that the chain is correct: vCPU pinning through QMP, SVM exit reasons, both tracing backends, KVM's
binary stats, the verdicts, and (negative controls) that the verifier fails what it must fail.

* image.py    the L1 image (kernel + uncompressed initramfs of the pinned userland), cached
* cpio.py     the newc writer for it and for the per-run archive
* host.py     boots L1 under TCG, streams its console, collects what it wrote
* inner.py    runs inside L1: the bench runs, results to the output disk
* controls.py negative controls on real windows
* cli.py      the `invoke selftest` task
"""
