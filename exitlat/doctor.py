"""`invoke doctor`, above the packages it ties together: the measured core's isolation checks
(exitlat.host.isolation) with the exitlat runs on this host (exitlat.run.cleanup: what holds the
core, what killed runs left)."""


def doctor_main(core: int | None, as_json: bool) -> int:
    from exitlat.host.isolation.cli import doctor_main as isolation_doctor
    from exitlat.run.cleanup import render_runs, runs_state_of

    return isolation_doctor(core, as_json, runs=runs_state_of, render_runs=render_runs)
