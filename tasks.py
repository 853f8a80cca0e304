"""Invoke tasks for exitlat. Each task only parses its arguments and calls the package.

Run `invoke --list` for the tasks and `invoke --help TASK` for each one's options.
"""

import functools
import sys

from invoke import Exit, task

from exitlat.errors import ExitlatError


def cli(fn):
    """Turn ExitlatError and Ctrl-C into one line on stderr and a non-zero exit, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except ExitlatError as err:
            print(f"error: {err}", file=sys.stderr)
            raise Exit(code=err.exit_code)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise Exit(code=130)
        if code:
            raise Exit(code=code)

    return wrapper


# --- build -------------------------------------------------------------------------------------


@task(help={
    "mirror": "folder of source tarballs to try first (files named as in pins.yaml)",
    "pins": "pins file (default: pins.yaml in the repository)",
    "verify_reproducible": "build again in a fresh folder and list every artifact that differs",
    "force": "rebuild even when the cached build matches",
})
@cli
def build(c, mirror=None, pins=None, verify_reproducible=False, force=False):
    """Build the guest kernel, initramfs, probes and QEMU in Docker (cached by input hash)."""
    from exitlat.build import cli_build

    return cli_build(mirror=mirror, pins=pins, verify_reproducible=verify_reproducible, force=force)


# --- isolation ---------------------------------------------------------------------------------


@task(help={"core": "host core to check (default: the core bench would use)",
            "json": "print the state as JSON"})
@cli
def doctor(c, core=None, json=False):
    """Preflight: KVM, Docker, tracing and isolation of the measured core, with fixes."""
    from exitlat.isolation.cli import doctor_main

    return doctor_main(core=None if core is None else int(core), as_json=json)


@task(help={"core": "core to isolate", "revert": "restore every value saved by the last isolate",
            "dry_run": "print each change without making it",
            "state_file": "where previous values are saved"})
@cli
def isolate(c, core=None, revert=False, dry_run=False, state_file=None):
    """Apply run-time isolation for a core (governor, turbo, IRQs, ...), or revert it."""
    from exitlat.isolation.cli import isolate_main

    return isolate_main(core=None if core is None else int(core), revert=revert, dry_run=dry_run,
                        state_file=state_file)
