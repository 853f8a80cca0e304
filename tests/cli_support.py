"""Running the real command line from the tests, as a user would (`python3 -m invoke …`), and the
one shape every bad input must end in: one line on stderr starting with "error:", a non-zero exit,
no traceback."""

import os
import subprocess
import sys

from exitlat.paths import REPO_ROOT


def invoke(*args, results=None, cwd=None, env=None, timeout=300):
    """`invoke ARGS` in the repository (or in `cwd`, still reading this repository's tasks.py);
    `results`: the results folder (EXITLAT_RESULTS_DIR); `env`: more environment variables."""
    full = dict(os.environ, **(env or {}))
    if results:
        full["EXITLAT_RESULTS_DIR"] = str(results)
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT),
                           *map(str, args)], capture_output=True, text=True, env=full,
                          cwd=cwd or REPO_ROOT, timeout=timeout)


def one_line_error(res, *needles) -> str:
    """The error line, after checking its shape and that it names every needle."""
    err = res.stderr.strip()
    assert res.returncode != 0, (res.returncode, res.stdout, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for n in needles:
        assert n in err, err
    return err
