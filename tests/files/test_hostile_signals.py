"""Stopping a run at the worst moment: SIGTERM, SIGHUP and SIGINT during the save, and a reader
that closes stdout. Nothing may be left behind, and OUT is the old model or the new, whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from graphs import run
from hostile import leftovers, save_external, wide_mlp


def _slow_to_save(path):
    """64 MB of weights that do not fold (slopes 0.5): the save writes all of them."""
    m = wide_mlp(d=512, h=8192, blocks=2)
    for tensor in m.graph.initializer:
        if tensor.name.startswith("s"):
            tensor.raw_data = np.full(1, 0.5, np.float32).tobytes()
    return save_external(m, path)


def _saving(folder) -> bool:
    return any(
        e.name.startswith(".lconnx-") and not e.name.startswith(".lconnx-probe")
        for e in os.scandir(folder)
    )


def _stop_during_save(args, folder, signum, delay=0.0):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lconnx", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _saving(folder) and time.monotonic() < deadline:
        time.sleep(0.0005)
    time.sleep(delay)
    caught = proc.poll() is None
    if caught:
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, caught


@pytest.mark.parametrize(
    "signum,delay",
    [
        (signal.SIGTERM, 0.0),
        (signal.SIGTERM, 0.03),
        (signal.SIGTERM, 0.08),
        (signal.SIGHUP, 0.0),
        (signal.SIGHUP, 0.05),
        (signal.SIGINT, 0.0),
        (signal.SIGINT, 0.05),
    ],
)
def test_a_stop_during_the_save_leaves_no_temp_files_and_a_whole_model(tmp_path, signum, delay):
    """The signal lands at the save's start or part-way (the delay): never a leftover."""
    src = _slow_to_save(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    code, err, caught = _stop_during_save(
        ["optimize", "--no-verify", src, out], tmp_path, signum, delay
    )
    if not caught:
        pytest.skip("the save finished before the signal could be sent")
    assert code == 128 + signum, err
    assert err.splitlines() == [f"lconnx: stopped by {signal.Signals(signum).name}"]
    assert leftovers(tmp_path) == []
    if out.exists():  # the signal landed while the result was being published: it is whole
        onnx.checker.check_model(str(out), full_check=True)
    else:
        assert sorted(os.listdir(tmp_path)) == ["in.onnx", "in.onnx.data"]


def test_a_closed_stdout_does_not_stop_the_write(tmp_path):
    src = save_external(wide_mlp(), tmp_path / "e.onnx")
    out = tmp_path / "o.onnx"
    proc = subprocess.run(
        f"'{sys.executable}' -m lconnx optimize '{src}' '{out}' | head -c 1 >/dev/null; "
        'exit "${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    x = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    np.testing.assert_allclose(
        run(onnx.load(str(out)), {"x": x})[0],
        run(onnx.load(str(src)), {"x": x})[0],
        rtol=1e-4,
        atol=1e-4,
    )
