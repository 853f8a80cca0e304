"""Every doctor/isolate item, in order. Order matters for isolate: irqbalance stops before IRQs
move, turbo goes off before the minimum frequency is raised."""

from .base import FAIL, INFO, PASS, WARN, Change, Check, Host, Item
from .boot import Isolcpus, NohzFull, RcuNocbs, SmtSibling
from .environment import Docker, DevKvm, KvmModule, Mitigations, Tracefs, Virtualization
from .tunables import (CStates, DefaultIrqAffinity, Governor, IrqAffinity, Irqbalance, Ksm, MinFreq,
                       NmiWatchdog, NumaBalancing, PerfSampleRate, StatInterval, Thp, TimerMigration, Turbo,
                       WorkqueueCpumask)

ITEMS: list[type[Item]] = [
    DevKvm, Virtualization, KvmModule, Docker, Tracefs,
    Isolcpus, NohzFull, RcuNocbs, SmtSibling,
    Turbo, Governor, MinFreq, CStates,
    Irqbalance, IrqAffinity, DefaultIrqAffinity, WorkqueueCpumask,
    TimerMigration, NmiWatchdog, StatInterval, PerfSampleRate, NumaBalancing, Thp, Ksm,
    Mitigations,
]

__all__ = [
    "ITEMS", "Change", "Check", "Host", "Item", "PASS", "WARN", "FAIL", "INFO", "DevKvm",
    "Virtualization", "KvmModule", "Docker", "Tracefs", "Isolcpus", "NohzFull", "RcuNocbs",
    "SmtSibling", "Turbo", "Governor", "MinFreq", "CStates", "Irqbalance", "IrqAffinity",
    "DefaultIrqAffinity", "WorkqueueCpumask", "TimerMigration", "NmiWatchdog", "StatInterval",
    "PerfSampleRate", "NumaBalancing", "Thp", "Ksm", "Mitigations",
]
