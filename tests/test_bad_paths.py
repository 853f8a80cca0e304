"""Every path a user can give, given badly, ends in one line on stderr and a non-zero exit, before
any work starts: missing, unwritable, a file where a folder is expected, a folder where a file is
expected, unreadable. The real CLI runs (`python3 -m invoke …`), as a user would run it.

Paths that no user may write even as root are used for "unwritable" (/proc, where nothing can be
made), so the tests mean the same thing with and without root."""

import os

import pytest

from bundle_fixtures import make_bundle
from cli_support import invoke, one_line_error
from exitlat.paths import REPO_ROOT


@pytest.fixture
def paths(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not what was asked for\n")
    d = tmp_path / "a-folder"
    d.mkdir()
    return {"file": f, "dir": d, "missing": tmp_path / "missing", "under-file": f / "sub",
            "proc": "/proc/exitlat-nope", "tmp": tmp_path}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("results"), name="good")


# --- invoke build --pins / --mirror --------------------------------------------------------------


@pytest.mark.parametrize("which, needle", [
    ("missing", "no such file"), ("dir", "is a folder"), ("under-file", "no such file")])
def test_build_pins(paths, which, needle):
    one_line_error(invoke("build", "--pins", paths[which]), "--pins", needle)


def test_build_pins_unreadable():
    one_line_error(invoke("build", "--pins", "/proc/self/mem"), "cannot read pins file")


def test_build_pins_not_text(paths):
    paths["file"].write_bytes(b"\xff\xfe\x00binary")
    one_line_error(invoke("build", "--pins", paths["file"]), "pins")


@pytest.mark.parametrize("which, needle", [
    ("missing", "no such folder"), ("file", "not a folder"), ("under-file", "no such folder")])
def test_build_mirror(paths, which, needle):
    one_line_error(invoke("build", "--mirror", paths[which], "--force"), "--mirror", needle)


# --- invoke bench --output / --build ---------------------------------------------------------------


@pytest.mark.parametrize("which, needle", [
    ("proc", "cannot write there"), ("file", "not a folder"), ("under-file", "cannot write there")])
def test_bench_output(paths, which, needle):
    # Refused before anything is built or started (a build would take minutes).
    res = invoke("bench", "--case", "1", "--accel", "tcg", "--output", paths[which], timeout=60)
    one_line_error(res, "--output", needle)


@pytest.mark.parametrize("which, needle", [
    ("missing", "no such folder"), ("file", "not a folder"), ("dir", "not a finished build folder")])
def test_bench_build(paths, which, needle):
    one_line_error(invoke("bench", "--case", "1", "--accel", "tcg", "--build", paths[which]), "--build", needle)


@pytest.mark.slow
def test_bench_build_given_as_a_relative_path(paths):
    """A --build folder given relative to the working directory runs (the runtime container mounts
    the build folder: a relative path once failed there with Docker's "mount path must be absolute")."""
    from exitlat.build.stages import find_build

    build = find_build()
    if build is None:
        from exitlat.build.builder import build as do_build
        build, _ = do_build()
    rel = os.path.relpath(build, REPO_ROOT)
    res = invoke("bench", "--case", "1", "--accel", "tcg", "--iterations", "50", "--warmup", "0",
                 "--no-baselines", "--build", rel, "--output", paths["dir"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(paths["dir"].iterdir())) == 1


def test_output_check_leaves_nothing_behind(paths):
    """A missing --output folder is made to check it can be written, then removed again when the
    run stops for another reason."""
    new = paths["tmp"] / "new" / "results"
    one_line_error(invoke("bench", "--case", "7", "--accel", "tcg", "--output", new), "1-6")
    assert not (paths["tmp"] / "new").exists()


# --- invoke isolate --state-file -------------------------------------------------------------------


@pytest.mark.parametrize("which, needle", [
    ("dir", "is a folder"), ("proc", "cannot write there"), ("under-file", "is not a folder")])
def test_isolate_state_file(paths, which, needle):
    one_line_error(invoke("isolate", "--dry-run", "--core", "0", "--state-file", paths[which]),
             "--state-file", needle)


@pytest.mark.parametrize("which, needle", [
    ("missing", "no such file"), ("dir", "is a folder")])
def test_isolate_revert_state_file(paths, which, needle):
    one_line_error(invoke("isolate", "--revert", "--dry-run", "--state-file", paths[which]),
             "--state-file", needle)


def test_isolate_revert_state_file_not_json(paths):
    one_line_error(invoke("isolate", "--revert", "--dry-run", "--state-file", paths["file"]),
             "isolate state")


# --- results, bundles -------------------------------------------------------------------------------


@pytest.mark.parametrize("which, needle", [("missing", "no such folder"), ("file", "not a folder")])
def test_results_root(paths, which, needle):
    one_line_error(invoke("results", "--root", paths[which]), "--root", needle)


@pytest.mark.parametrize("task", ["report", "validate", "plot", "export"])
@pytest.mark.parametrize("which", ["missing", "file", "dir"])
def test_bundle_argument(paths, task, which):
    one_line_error(invoke(task, paths[which]), str(paths[which]))


def test_compare_bad_bundle(paths, bundle):
    one_line_error(invoke("compare", bundle, paths["missing"]), str(paths["missing"]))
    one_line_error(invoke("compare", paths["file"], bundle), str(paths["file"]))


def test_bundle_json_is_a_folder(paths):
    b = paths["tmp"] / "odd"
    (b / "bundle.json").mkdir(parents=True)
    one_line_error(invoke("report", b))


@pytest.mark.parametrize("which, needle", [
    ("dir", "is a folder"), ("missing", "does not exist"), ("proc", "cannot write there"),
    ("file", "already exists")])
def test_export_output(paths, bundle, which, needle):
    out = paths[which] if which != "missing" else paths["missing"] / "x.tar.gz"
    if which == "proc":
        out = "/proc/exitlat-nope.tar.gz"
    one_line_error(invoke("export", bundle, "--output", out), needle)


@pytest.mark.parametrize("which, needle", [
    ("missing", "no such file"), ("dir", "is a folder"), ("file", "archive")])
def test_import_file(paths, which, needle):
    one_line_error(invoke("import", paths[which], "--output", paths["tmp"] / "r"), needle)


@pytest.mark.parametrize("which, needle", [
    ("proc", "cannot write there"), ("file", "not a folder"), ("under-file", "cannot write there")])
def test_import_output(paths, bundle, which, needle):
    archive = paths["tmp"] / "good.tar.gz"
    assert invoke("export", bundle, "--output", archive).returncode == 0
    one_line_error(invoke("import", archive, "--output", paths[which]), "--output", needle)


@pytest.mark.parametrize("which, needle", [
    ("proc", "cannot write there"), ("file", "not a folder"), ("under-file", "cannot write there")])
def test_plot_output(paths, bundle, which, needle):
    pytest.importorskip("matplotlib")
    one_line_error(invoke("plot", bundle, "--output", paths[which]), "--output", needle)
