"""The output contract under hostile paths: aliases of the input, of its data, of each other;
targets that are not files; folders that refuse writes; and the same command run twice."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess

import numpy as np
import onnx
import pytest
from graphs import run
from hostile import assert_refused, lconnx, leftovers, save_external, snapshot, wide_mlp

from lconnx.files.external_data import is_lconnx_data_name


@pytest.fixture
def ext_model(tmp_path):
    """An exporter-style model: ``e.onnx`` with its weights in ``weights.bin``."""
    return save_external(wide_mlp(), tmp_path / "e.onnx", location="weights.bin")


def _refused_without_a_trace(tmp_path, args, code, fragment):
    before = snapshot(tmp_path)
    proc = lconnx(*args)
    assert_refused(proc, code, fragment)
    assert snapshot(tmp_path) == before  # nothing written, nothing changed, no temp file


@pytest.mark.parametrize(
    "out,report,fragment",
    [
        ("weights.bin", None, "must not overwrite the input's external data"),
        ("o.onnx", "weights.bin", "the report must not overwrite the input's external data"),
        ("o.onnx", "e.onnx", "the report must not overwrite the input model"),
        ("o.onnx", "o.onnx", "the report must not overwrite the output model"),
        ("o.onnx", "o.onnx.data", "must not overwrite the output model's external data"),
        ("e.onnx", None, "output equals the input"),
        ("./sub/../e.onnx", None, "output equals the input"),
    ],
)
def test_a_target_that_aliases_a_read_or_another_target_is_refused(
    tmp_path, ext_model, out, report, fragment
):
    (tmp_path / "sub").mkdir()
    args = ["optimize", ext_model, tmp_path / out]
    if report:
        args += ["--report", tmp_path / report]
    _refused_without_a_trace(tmp_path, args, 1, fragment)


def test_aliases_by_file_identity_are_refused(tmp_path, ext_model):
    """A hard link is the input under another name; a path check alone cannot see it (nor a
    bind mount, nor a case-insensitive file system): the device + inode check does."""
    os.link(ext_model, tmp_path / "alias.onnx")
    os.link(tmp_path / "weights.bin", tmp_path / "alias.bin")
    _refused_without_a_trace(
        tmp_path, ["optimize", ext_model, tmp_path / "alias.onnx"], 1, "output equals the input"
    )
    _refused_without_a_trace(
        tmp_path,
        ["optimize", ext_model, tmp_path / "o.onnx", "--report", tmp_path / "alias.bin"],
        1,
        "must not overwrite the input's external data",
    )


def test_an_input_named_like_the_outputs_data_file_is_kept(tmp_path):
    """IN ``d/o.onnx.data`` with OUT ``d/o.onnx``: OUT's data goes to a hashed name."""
    save_external(wide_mlp(), tmp_path / "o.onnx.data", location="w.bin")
    before = snapshot(tmp_path)
    proc = lconnx("optimize", tmp_path / "o.onnx.data", tmp_path / "o.onnx")
    assert proc.returncode == 0, proc.stderr
    after = snapshot(tmp_path)
    assert {k: after[k] for k in before} == before


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_target_that_is_not_a_regular_file_is_refused(tmp_path, ext_model, kind):
    if kind == "directory":
        target = tmp_path / "o.onnx"
        target.mkdir()
    elif kind == "fifo":
        target = tmp_path / "o.onnx"
        os.mkfifo(target)
    else:
        target = "/dev/null"
    for args in (
        ["optimize", ext_model, target],
        ["optimize", ext_model, tmp_path / "x.onnx", "--report", target],
    ):
        proc = lconnx(*args)
        assert_refused(proc, 1, "exists and is")
    assert not (tmp_path / "x.onnx").exists() and not leftovers(tmp_path)


def test_a_bad_report_path_is_found_before_any_work(tmp_path, ext_model):
    for report, fragment in [
        (tmp_path / "nope" / "r.json", "does not exist"),
        (tmp_path, "is a directory"),
    ]:
        _refused_without_a_trace(
            tmp_path, ["optimize", ext_model, tmp_path / "o.onnx", "--report", report], 1, fragment
        )


@contextlib.contextmanager
def _tmpfs(folder, options):
    """A small file system of our own at ``folder`` (root only): read-only, or nearly full."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_found_before_any_work(tmp_path, ext_model):
    """Permission bits do not bind root; a read-only mount does, and shows only on a write."""
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        before = snapshot(tmp_path)
        proc = lconnx("optimize", ext_model, folder / "o.onnx")
        assert_refused(proc, 1, "cannot write in folder")
        assert snapshot(tmp_path) == before


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, ext_model):
    """The probe file fits, the 16 kB result does not: the write fails half-way (ENOSPC)."""
    with _tmpfs(tmp_path / "full", "size=12k") as folder:
        proc = lconnx("optimize", ext_model, folder / "o.onnx")
        assert_refused(proc, 1, "nothing written")
        assert list(folder.iterdir()) == []


def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, ext_model):
    """RLIMIT_FSIZE makes the write fail half-way (EFBIG), as a full disk would."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))  # the result needs 16 kB

    before = snapshot(tmp_path)
    proc = lconnx("optimize", ext_model, tmp_path / "o.onnx", preexec_fn=limit)
    assert_refused(proc, 1, "write failed, nothing written")
    assert snapshot(tmp_path) == before


def test_the_same_command_twice_gives_byte_identical_files(tmp_path, ext_model):
    """Re-runs are idempotent from any working directory, with a stray data file there too."""
    out = tmp_path / "o.onnx"
    first = lconnx("optimize", ext_model, out)
    assert first.returncode == 0, first.stderr
    written = snapshot(tmp_path)
    data = [n for n in written if is_lconnx_data_name("o.onnx", n)]
    assert len(data) == 1 and data[0] != "o.onnx.data"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "o.onnx.data").write_bytes(b"stray")
    (tmp_path / "sub" / data[0]).write_bytes(b"stray")
    for cwd in (tmp_path, tmp_path / "sub"):
        again = lconnx(
            "optimize",
            "../e.onnx" if cwd.name == "sub" else "e.onnx",
            "../o.onnx" if cwd.name == "sub" else "o.onnx",
            cwd=cwd,
        )
        assert again.returncode == 0, again.stderr
        now = snapshot(tmp_path)
        assert {k: v for k, v in now.items() if not k.startswith("sub")} == written
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(
        run(onnx.load(str(out)), {"x": x})[0],
        run(onnx.load(str(ext_model)), {"x": x})[0],
        rtol=1e-4,
        atol=1e-4,
    )


def test_a_new_result_replaces_the_old_pair_and_its_data(tmp_path, ext_model):
    """A second, different result at the same OUT: the old hashed data file goes, the input's
    data stays, and OUT reads only its own new data."""
    out = tmp_path / "o.onnx"
    assert lconnx("optimize", ext_model, out).returncode == 0
    old = {n for n in os.listdir(tmp_path) if is_lconnx_data_name("o.onnx", n)}
    save_external(wide_mlp(blocks=3), tmp_path / "f.onnx", location="f.bin")
    assert lconnx("optimize", tmp_path / "f.onnx", out).returncode == 0
    new = {n for n in os.listdir(tmp_path) if is_lconnx_data_name("o.onnx", n)}
    assert len(new) == 1 and not (old & new)
    assert (tmp_path / "weights.bin").exists() and (tmp_path / "f.bin").exists()
    onnx.checker.check_model(str(out), full_check=True)


def test_written_files_get_the_usual_mode(tmp_path, ext_model):
    """0666 less the umask, as any tool's output: a server running as another user must read
    the weights as well as the graph."""
    old = os.umask(0o022)
    try:
        proc = lconnx("optimize", ext_model, tmp_path / "o.onnx", "--report", tmp_path / "r.json")
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    written = [n for n in os.listdir(tmp_path) if n.startswith(("o.onnx", "r.json"))]
    assert len(written) == 3
    for name in written:
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize(
    "flag,target,fragment",
    [
        ("--json", "weights.bin", "the JSON output must not overwrite the external data"),
        ("--markdown", "e.onnx", "the Markdown output must not overwrite the benchmarked model"),
        ("--plot-dir", "e.onnx", "plot folder exists and is not a folder"),
        ("--json", "nope/b.json", "folder does not exist"),
    ],
)
def test_bench_outputs_follow_the_same_contract(tmp_path, ext_model, flag, target, fragment):
    _refused_without_a_trace(
        tmp_path, ["bench", ext_model, "--repeat", "1", flag, tmp_path / target], 1, fragment
    )
