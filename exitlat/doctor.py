"""`invoke doctor`, above the packages it ties together: the measured core's isolation checks
(exitlat.host.isolation) with the exitlat runs on this host (exitlat.run.cleanup: what holds the
core, what killed runs left)."""


def doctor_main(core, as_json: bool) -> int:
    """`core`: None (the core bench would use), N, or A,B (both checked: the two-vCPU kinds')."""
    from exitlat.errors import ExitlatError
    from exitlat.host.isolation.cli import doctor_main as isolation_doctor
    from exitlat.run.cleanup import render_runs, runs_state_of
    from exitlat.run.plan import parse_cores

    cores = [None] if core is None else parse_cores(core)
    if as_json and len(cores) > 1:
        raise ExitlatError("--json checks one core: run doctor once per core")
    return max(isolation_doctor(c, as_json, runs=runs_state_of, render_runs=render_runs)
               for c in cores)
