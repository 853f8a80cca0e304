"""Counting a vCPU's exits on the host while a traced window runs: ExitCounter (kvmtrace.py) and
its tracefs instance, the hist and stream backends, trace parsing, exit reasons, kprobes on KVM's
fastpath, and the timeline that pairs each exit with its re-entry."""
