"""exitlat: measure KVM VM-exit round-trip latency from inside a guest."""

__version__ = "0.1.0"
