"""Where a bench runs: the accelerator (hardware KVM, or TCG with a warning), the measured core and
its housekeeping partner, and the build folder (built first when the inputs have none)."""

import os
from pathlib import Path

from exitlat.errors import ExitlatError
from exitlat.progress import Progress



def choose_accel(requested: str, host: dict) -> tuple[str, str | None]:
    """(kvm or tcg, a warning to show or None). The warning is returned, not printed, so that a
    bad option is reported alone, before it."""
    from exitlat.host.facts import kvm_usable

    if requested not in ("auto", "kvm", "tcg"):
        raise ExitlatError(f"unknown --accel {requested!r}; choose auto, kvm or tcg")
    ok, why = kvm_usable()
    hw = host["cpu"].get("virtualization")
    if requested == "tcg":
        return "tcg", None
    if requested == "kvm":
        if not ok:
            raise ExitlatError(f"--accel kvm: {why}")
        if not hw:
            return "kvm", ("warning: this KVM has no VMX/SVM (software KVM such as kvm_pvm); a "
                           "Linux guest may boot very slowly and exits do not reflect hardware")
        return "kvm", None
    if ok and hw:
        return "kvm", None
    return "tcg", (f"warning: no hardware KVM here ({why if not ok else 'no vmx/svm flag'}); "
                   "using TCG — the numbers will NOT be VM-exit timings")


def resolve_cores(core: int | None, say) -> tuple[int, int, dict]:
    """(measured core, housekeeping core, the measured core's isolation state)."""
    from exitlat.host.isolation import collect_state, default_core, housekeeping_core

    if core is None:
        core, warning = default_core()
        if warning:
            say(f"warning: {warning}")
    ncpu = os.cpu_count() or 1
    if not 0 <= core < ncpu:
        raise ExitlatError(f"--core {core} does not exist (this host has cores 0-{ncpu - 1})")
    hk = housekeeping_core(core)
    from .cleanup import runs_state_of

    return core, hk, collect_state(core, runs=runs_state_of)


def resolve_peer(placement, peer: int | None, say):
    """The placement with the receiving vCPU's core (given, or peer_core's choice), its isolation
    state and the two cores' topology; a core that does not exist or is taken is one line."""
    from dataclasses import replace

    from exitlat.host.isolation import collect_state, pair_topology, peer_core

    core, hk = placement.core, placement.housekeeping
    if peer is None:
        peer, why = peer_core(core, hk)
        if peer is None:
            raise ExitlatError(why)
        if why:
            say(f"warning: {why}")
    ncpu = os.cpu_count() or 1
    if not 0 <= peer < ncpu:
        raise ExitlatError(f"--core {core},{peer}: core {peer} does not exist (this host has "
                           f"cores 0-{ncpu - 1})")
    if peer in (core, hk):
        raise ExitlatError(f"--core {core},{peer}: the receiving vCPU needs a core of its own, not "
                           f"{'the measured core' if peer == core else f'housekeeping core {hk}'}")
    from .cleanup import runs_state_of

    return replace(placement, peer=peer, peer_isolation=collect_state(peer, runs=runs_state_of),
                   topology=pair_topology(core, peer))


def ensure_build(progress: Progress) -> Path:
    from exitlat.build.builder import build
    from exitlat.build.stages import find_build

    folder = find_build()
    if folder is None:
        progress.say("no build for the current inputs: running `invoke build` first")
        folder, _ = build(progress=progress)
    return folder
