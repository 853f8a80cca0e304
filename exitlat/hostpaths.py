"""Which path a host-dependent exit kind takes on this host: the host's facts that decide it
(EPT, the TPR shadow, the VMX preemption timer, APICv, IPI virtualization, AVIC, the KVM
version) and the instruction table's `host_paths` rules read against them. The plan resolves every case's expected path here once; the
verifier then proves it, so a wrong rule shows up as a failed window, never as a wrong number."""

from __future__ import annotations

import re
from dataclasses import dataclass

from exitlat.instructions import PATH_NONE, PATH_TEXT, Instruction

_YES = ("Y", "1", "y")
_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}


@dataclass(frozen=True)
class PathChoice:
    path: str
    basis: str          # why: the rule and the facts it rested on, or "default"


def kernel_at_least(release: str | None, major: int, minor: int) -> bool | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return None if not m else (int(m.group(1)), int(m.group(2))) >= (major, minor)


def host_facts(host: dict | None) -> set[str]:
    """The facts `HostPath.facts` may name, as far as the host's record tells them. A fact that
    cannot be read is left out, so a rule needing it does not apply and the kind's default path is
    expected (the verifier then says whether the host agrees)."""
    host = host or {}
    cpu = host.get("cpu") or {}
    params = (host.get("kvm") or {}).get("parameters") or {}
    facts: set[str] = set()
    vendor = _VENDORS.get((cpu.get("vendor") or "").strip())
    if vendor:
        facts.add(vendor)
    if str(params.get("kvm_intel.ept", "")).strip() in _YES:
        facts.add("ept")
    if str(params.get("kvm_amd.npt", "")).strip() in _YES:
        facts.add("npt")
    if str(params.get("kvm_intel.preemption_timer", "")).strip().upper() in ("N", "0"):
        facts.add("no_preemption_timer")
    if str(params.get("kvm_intel.flexpriority", "")).strip().upper() in ("N", "0"):
        facts.add("no_flexpriority")
    if str(params.get("kvm_intel.enable_apicv", "")).strip() in _YES:
        facts.add("apicv")
    if str(params.get("kvm_intel.enable_ipiv", "")).strip() in _YES:
        facts.add("ipiv")
    if str(params.get("kvm_amd.avic", "")).strip() in _YES:
        facts.add("avic")
    svm = cpu.get("path_flags")
    # SVM's NRIP save gives KVM the next RIP: without it KVM must decode the instruction, which
    # its irq-off fastpath cannot (no SRCU there), so every WRMSR takes the normal handler
    if vendor == "amd" and ((isinstance(svm, list) and "nrip_save" not in svm)
                            or str(params.get("kvm_amd.nrips", "")).strip() in ("N", "0")):
        facts.add("no_nrips")
    vmx = cpu.get("vmx_flags")
    # /proc/cpuinfo's "vmx flags" names the TPR shadow "vtpr" (VMX_FEATURE_VIRTUAL_TPR)
    if isinstance(vmx, list) and vendor == "intel" and "vtpr" not in vmx:
        facts.add("no_tpr_shadow")
    release = (host.get("kernel") or {}).get("release")
    for major, minor in ((6, 4),):
        if kernel_at_least(release, major, minor):
            facts.add(f"kernel>={major}.{minor}")
    return facts


def _first_rule(rules, facts: set[str]):
    """The first of `rules` (HostPath) whose vendor and facts all hold, or None."""
    return next((r for r in rules if r.vendor in facts and all(f in facts for f in r.facts)), None)


def _matching(rules, facts: set[str]) -> PathChoice | None:
    """The first matching rule (_first_rule) as a path choice with its basis."""
    rule = _first_rule(rules, facts)
    if rule is None:
        return None
    on = ", ".join((rule.vendor,) + rule.facts)
    return PathChoice(rule.path, f"{PATH_TEXT[rule.path]} on this host ({on}): {rule.why}")


def choose_path(ins: Instruction, host: dict | None) -> PathChoice:
    """The path `ins` must take on `host` (no host record: the row's default)."""
    hit = _matching(ins.host_paths, host_facts(host))
    if hit:
        return hit
    if ins.host_paths:
        return PathChoice(ins.path, f"{PATH_TEXT[ins.path]}: the default (no host rule of "
                                    f"{ins.name} matched this host)")
    return PathChoice(ins.path, PATH_TEXT[ins.path])


def choose_receiver_path(ins: Instruction, host: dict | None) -> PathChoice | None:
    """Whether the receiving vCPU of a two-vCPU kind exits once per iteration (PATH_KVM: its row's
    `receiver` reason) or not at all on `host` (a `receiver_paths` rule); None for other kinds."""
    from exitlat.instructions import PATH_KVM

    if ins.receiver is None:
        return None
    hit = _matching(ins.receiver_paths, host_facts(host))
    if hit:
        return PathChoice(hit.path, f"receiver: {hit.basis}")
    vmx, svm = ins.receiver
    return PathChoice(PATH_KVM, f"receiver: one exit per iteration ({vmx} on VMX, {svm} on SVM)"
                                + ("; the default (no receiver rule matched this host)"
                                   if ins.receiver_paths else ""))


def choose_reason(ins: Instruction, host: dict | None) -> PathChoice | None:
    """The kvm_exit reason of a kind's exit on `host` where a `reason_paths` rule says it differs
    from its row's (as the PathChoice's `path`), else None: the row's vendor reason stands."""
    rule = _first_rule(ins.reason_paths, host_facts(host))
    if rule is None:
        return None
    return PathChoice(rule.path, f"exit: {rule.path} ({rule.why})")


def choose_second(ins: Instruction, host: dict | None) -> PathChoice | None:
    """The kvm_exit reason of a kind's second exit on `host` (as the PathChoice's `path`;
    PATH_NONE where a rule says this host takes none), None for kinds without one. A timer's
    expiry (tscdeadline) depends on the host: VMX's preemption timer where KVM backs the deadline
    with it, else KVM's hrtimer, whose interrupt kicks the running vCPU out (an external-interrupt
    exit)."""
    if ins.second is None:
        return None
    facts = host_facts(host)
    vmx, svm = ins.second
    if not ins.timer_expiry:
        rule = _first_rule(ins.second_paths, facts)     # HostPath.path: the reason here
        if rule is not None and rule.path == PATH_NONE:    # this host takes no second exit
            return PathChoice(PATH_NONE, f"then: no second exit ({rule.why})")
        if rule is not None:
            return PathChoice(rule.path, f"then: {rule.path} ({ins.second_why}; {rule.why})")
        reason = svm if "amd" in facts else vmx
        return PathChoice(reason, f"then: {reason} ({ins.second_why})")
    if "amd" in facts:
        return PathChoice(svm, f"expiry: {svm} (SVM has no preemption timer: KVM's hrtimer "
                               "interrupts the vCPU)")
    if "no_preemption_timer" in facts:
        return PathChoice("EXTERNAL_INTERRUPT", "expiry: EXTERNAL_INTERRUPT "
                          "(kvm_intel.preemption_timer=N: KVM's hrtimer interrupts the vCPU)")
    return PathChoice(vmx, f"expiry: {vmx} (the VMX preemption timer backs the deadline)")
