"""Host isolation for exit-latency runs: `doctor` judges it, `isolate` applies what can change at
run time (and reverts it). See docs/isolation.md."""

from .doctor import collect_state
from .host import default_core, housekeeping_core, pair_topology, peer_core

__all__ = ["collect_state", "default_core", "housekeeping_core", "pair_topology", "peer_core"]
