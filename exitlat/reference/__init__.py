"""The reference beside the cases: kvm-unit-tests' x86/vmexit.flat, built from a pinned tag
(exitlat/build, stage `reference`), run by `invoke bench --reference` on the same QEMU, core,
accelerator and container as the cases, and carried in the bundle's `reference` section
(docs/measuring.md, "exitlat and kvm-unit-tests")."""
