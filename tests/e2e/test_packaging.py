"""The source distribution is complete: built as a user's ``pip download`` would get it, its
test suite collects (every test module imports what it needs) and a part of it passes."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (archive,) = out.glob("lconnx-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return next(p for p in out.iterdir() if p.is_dir())


def test_the_sdist_carries_license_types_and_schema(unpacked):
    for name in ("LICENSE", "lconnx/py.typed", "lconnx/schemas/report.schema.json"):
        assert (unpacked / name).is_file(), name
    assert "Apache License" in (unpacked / "LICENSE").read_text()


def test_the_sdist_tests_collect_and_run(unpacked):
    env = {"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"}
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert collect.returncode == 0, collect.stdout[-2000:] + collect.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/files/test_io.py"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:]
