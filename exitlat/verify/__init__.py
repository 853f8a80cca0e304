"""Which path each exit took: tracing backends, KVM stats, the rules and verdicts."""
