"""One bench run, planned once.

`BenchOptions` is what the user asked for. `make_plan()` checks it once and derives, with the host's
facts and the chosen accelerator, a `RunPlan`: the cases with the path each must take, how exits
are named on this host, how many VM runs and traced iterations. Everything downstream reads the
plan: the guest's command line (`RunPlan.guest`), the verifier's expectations (`specs`,
`verdict_context()`), the VM runs, and the bundle's `options` (`options_doc()`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from exitlat.cases import CaseSpec, case_specs, parse_instrs
from exitlat.instructions import F_INSTRUCTIONS
from exitlat.errors import ExitlatError
from exitlat.verify.verdicts import VerdictContext

from .guestio import GuestPlan

DEBUGCONS = ("auto", "file", "null")
TRACING_BACKENDS = ("auto", "hist", "stream")
DEFAULT_VERIFY_ITERATIONS = 10_000
RECOMMENDED_REPEAT = 5        # VM runs when --repeat is auto under KVM (docs/statistics.md)


@dataclass
class BenchOptions:
    """The options of `invoke bench`, as given (exitlat.bench.bench_main parses the strings)."""
    cases: list[int]
    iterations: int = 10000
    warmup: int = 1000
    instr: str = "cpuid"           # one F kind, a comma list, or "all" (cases.parse_instrs)
    port: int = 0xE9
    timer: str = "rdtscp"
    core: int | None = None
    peer_core: int | None = None    # --core A,B: the receiving vCPU's core (two-vCPU kinds)
    accel: str = "auto"
    repeat: int | None = None      # None: RECOMMENDED_REPEAT under KVM, 1 under TCG
    label: str | None = None
    output: Path | None = None
    container: bool = True
    verify: bool = True
    require_isolation: bool = False
    debugcon: str = "auto"
    baselines: bool = True
    boot_timeout: float | None = None
    build: Path | None = None               # a build folder to use instead of the current inputs'
    tracing: str = "auto"                   # verification backend: auto, hist or stream
    verify_iterations: int | None = None    # traced window per case (None: min(iterations, 10000))
    emulated_host: bool | str = False       # set by selftest: the host is an emulated machine (its note)
    reference: bool = False                 # also run kvm-unit-tests' vmexit.flat (exitlat/reference/)


def parse_int(text, what: str, lo: int, hi: int) -> int:
    try:
        v = int(str(text), 0)
    except ValueError:
        raise ExitlatError(f"{what} must be an integer, got {text!r}") from None
    if not lo <= v <= hi:
        raise ExitlatError(f"{what} must be between {lo} and {hi}, got {v}")
    return v


def parse_cores(text, most: int = 2) -> list[int]:
    """--core N, or A,B (the two-vCPU kinds' receiving vCPU on B): the cores, each checked, with
    a one-line error on a bad one. `most`: how many the option takes."""
    from exitlat.limits import MAX_CORE

    parts = str(text).split(",")
    if len(parts) > most:
        raise ExitlatError(f"--core takes {'one core' if most == 1 else 'one core or two (A,B)'}, "
                           f"got {text!r}")
    names = ("--core", "--core's second core")
    return [parse_int(p.strip(), names[i], 0, MAX_CORE) for i, p in enumerate(parts)]


def _one_of(value, choices, option: str) -> None:
    if value not in choices:
        raise ExitlatError(f"unknown {option} {value!r}; choose {', '.join(choices)}")


def check_options(o: BenchOptions) -> None:
    """The options that no later step checks: how the run is verified and where its build is.
    --accel is checked by choose_accel(), the cases, instruction and port by case_specs(), the
    guest's numbers by GuestPlan.validate()."""
    _one_of(o.debugcon, DEBUGCONS, "--debugcon")
    _one_of(o.tracing, TRACING_BACKENDS, "--tracing")
    if o.build is not None and not (Path(o.build) / "manifest.json").is_file():
        raise ExitlatError(f"--build {o.build}: not a finished build folder (no manifest.json)")


@dataclass(frozen=True)
class Placement:
    """Where the run's vCPUs go: the measured core, QEMU's other threads' core, and the measured
    core's isolation state (exitlat.host.isolation.collect_state); for a two-vCPU plan also the
    receiving vCPU's core, its isolation state and where the two cores sit (pair_topology)."""
    core: int = 0
    housekeeping: int = 0
    isolation: dict = field(default_factory=dict)
    peer: int | None = None
    peer_isolation: dict = field(default_factory=dict)
    topology: dict = field(default_factory=dict)

    @property
    def vcpu_cores(self) -> list[int]:
        """Each vCPU's core, vCPU 0 (the measured one) first."""
        return [self.core] + ([self.peer] if self.peer is not None else [])


@dataclass(frozen=True)
class RunPlan:
    options: BenchOptions
    accel: str                         # kvm or tcg, as chosen for this host
    repeat: int                        # VM runs
    vendor: str                        # how this host names exits: intel, amd or unknown
    specs: tuple[CaseSpec, ...]        # the cases, each with the path it must take here
    verify_iterations: int             # each case's traced window; 0: none
    guest: GuestPlan                   # what the guest runs (its kernel command line)
    placement: Placement = Placement()
    kvm_params: dict | None = None     # the host's KVM module parameters (they decide paths)
    build: Path | None = None          # the build folder (with_build, once the core is ours)
    manifest: dict = field(default_factory=dict)     # its manifest.json
    pins_base: dict = field(default_factory=dict)    # the base image's pins (runtime container)

    @property
    def core(self) -> int:
        return self.placement.core

    @property
    def housekeeping(self) -> int:
        return self.placement.housekeeping

    @property
    def vcpus(self) -> int:
        """vCPUs of each VM: 2 when a kind sends IPIs to a second vCPU, else 1 (the guest's
        plan names the same kinds as the specs)."""
        return self.guest.vcpus()

    @property
    def isolation(self) -> dict:
        return self.placement.isolation

    def with_build(self, build: Path, pins_base: dict) -> "RunPlan":
        """The plan with its build folder (absolute: the runtime container mounts it at the same
        path) and that folder's manifest."""
        import json

        build = Path(build).resolve()
        manifest = json.loads((build / "manifest.json").read_text())
        return replace(self, build=build, manifest=manifest, pins_base=pins_base)

    def verdicts(self):
        """Every window's verdict, for the live progress lines and the bundle alike."""
        from exitlat.verify.verdicts import Verdicts

        return Verdicts(self.verdict_context(), self.n_timed, self.verify_iterations)

    @property
    def n_timed(self) -> int:
        """Iterations of a timed window, warm-up included (what KVM's stats count)."""
        return self.options.iterations + self.options.warmup

    @property
    def verifying(self) -> bool:
        return self.accel == "kvm" and self.options.verify

    def verdict_context(self) -> VerdictContext:
        return VerdictContext(vendor=self.vendor, port=self.options.port, kvm_params=self.kvm_params)

    def options_doc(self) -> dict:
        """The bundle's `options`: every option as given, --repeat as resolved."""
        o = replace(self.options, repeat=self.repeat)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()}


def traced_iterations(o: BenchOptions, accel: str) -> int:
    """Iterations of each case's traced window: none under TCG or --no-verify."""
    if accel != "kvm" or not o.verify:
        return 0
    if o.verify_iterations is not None:
        return o.verify_iterations
    return min(o.iterations, DEFAULT_VERIFY_ITERATIONS)


def make_plan(o: BenchOptions, host: dict, accel: str, placement: Placement | None = None) -> RunPlan:
    """The one place a run's options are checked and everything about the run is derived (the
    placement, resolved by plan_bench on a real host, defaults to core 0 for tests)."""
    from exitlat.verify.rules import exit_vendor

    check_options(o)
    specs = case_specs(o.cases, o.instr, o.port, host=host, two_cores=o.peer_core is not None)
    vendor = exit_vendor((host.get("cpu") or {}).get("vendor") or "")
    viters = traced_iterations(o, accel)
    # the F instructions, in the order asked (table order for "all"): the guest pairs them with
    # the cases as case_specs did (cases.case_keys)
    used = {s.instruction for s in specs if s.number % 2}
    asked = parse_instrs(o.instr)
    f_instrs = [n for n in (F_INSTRUCTIONS if asked == "all" else asked) if n in used] or ["cpuid"]
    guest = GuestPlan(cases=list(o.cases), instr=",".join(f_instrs), port=o.port, timer=o.timer,
                      iterations=o.iterations, warmup=o.warmup, baselines=o.baselines,
                      handshake=True, vendor=None if vendor == "unknown" else vendor,
                      verify_iterations=viters)
    timed_keys = [k for k in guest.keys() if k.startswith("case") and not k.endswith("_traced")]
    if timed_keys != [s.key for s in specs]:      # the guest and the verifier must pair the same
        raise ExitlatError(f"internal: the guest's keys {timed_keys} are not the cases' "
                           f"{[s.key for s in specs]}")
    repeat = o.repeat if o.repeat is not None else (RECOMMENDED_REPEAT if accel == "kvm" else 1)
    plan = RunPlan(o, accel, repeat, vendor, tuple(specs), viters, guest,
                   placement or Placement(core=o.core or 0),
                   kvm_params=(host.get("kvm") or {}).get("parameters"))
    if plan.vcpus == 1 and o.peer_core is not None:
        raise ExitlatError(f"--core {o.core},{o.peer_core}: a second core is for the two-vCPU "
                           "kinds (ipi, ipi_halt), and none of the cases runs one")
    return plan


def plan_bench(o: BenchOptions, host: dict, say) -> RunPlan:
    """A bench's plan on this host: the accelerator, the options checked, the cores and their
    isolation, and whether the exits can be verified here; every refusal is one line, the options'
    first (a bad option is reported alone, before any warning)."""
    from .placement import choose_accel, resolve_cores, resolve_peer

    accel, accel_warning = choose_accel(o.accel, host)
    plan = make_plan(o, host, accel)
    if accel_warning:
        say(accel_warning)
    core, hk, isolation = resolve_cores(o.core, say)
    placement = Placement(core, hk, isolation)
    if plan.vcpus > 1:
        placement = resolve_peer(placement, o.peer_core, say)
    for c, state in ((core, isolation), (placement.peer, placement.peer_isolation)):
        if c is None or state.get("isolated"):
            continue
        msg = f"core {c} is not isolated (see `invoke doctor --core {c}`)"
        if o.require_isolation:
            raise ExitlatError(msg + " and --require-isolation was given")
        say(f"warning: {msg}")
    if plan.verifying:
        from exitlat.verify.trace.tracefs import tracing_available

        ok, why = tracing_available()
        if not ok:
            raise ExitlatError(f"cannot verify exit paths: {why} (or run with --no-verify)")
    return replace(plan, placement=placement)
