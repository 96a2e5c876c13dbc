"""The output contract: every path a command will write, checked before any work is done.

A write target must not be, by path or by file identity (device + inode: a hard link, a bind
mount, a case-insensitive file system), any file the command reads, nor another target, nor the
external data of the model it writes. It must be a regular file or not exist yet, in a folder
that exists and accepts a new file (tried for real: permission bits do not bind root, and a
read-only mount shows only when written to).
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lconnx.errors import OutputPathError
from lconnx.files.external_data import is_lconnx_data_name
from lconnx.files.signals import deferred_signals


@dataclass(frozen=True)
class Target:
    """One path the command will write, and what it is, for messages."""

    path: Path
    role: str
    folder: bool = False  # a directory of files (--plot-dir), not a file


@dataclass
class OutputPlan:
    """What a command reads and writes; ``check`` refuses any unsafe combination."""

    reads: list[tuple[Path, str]] = field(default_factory=list)
    writes: list[Target] = field(default_factory=list)

    def read(self, path: str | os.PathLike[str], role: str) -> OutputPlan:
        self.reads.append((Path(path), role))
        return self

    def write(
        self, path: str | os.PathLike[str] | None, role: str, folder: bool = False
    ) -> OutputPlan:
        if path is not None:
            self.writes.append(Target(Path(path), role, folder))
        return self

    def reading_data_of_input(self, files: set[Path]) -> None:
        """``load_model``'s ``before_reading`` hook: add the input's data files, check again."""
        for path in sorted(files):
            self.read(path, "input's external data")
        self.check()

    @property
    def input_data(self) -> set[Path]:
        return {path for path, role in self.reads if role == "input's external data"}

    def check(self) -> None:
        """Raise OutputPathError for the first unsafe target; write nothing."""
        read_ids = [(path, role, file_identity(path)) for path, role in self.reads]
        seen: list[tuple[Target, tuple[int, int] | None]] = []
        models = [t for t in self.writes if t.role == "output model"]
        for target in self.writes:
            _check_kind(target)
            _check_folder(target)
            ident = file_identity(target.path)
            for path, role, read_ident in read_ids:
                if _same(target.path, ident, path, read_ident):
                    if (target.role, role) == ("output model", "input model"):
                        raise OutputPathError(
                            f"{target.path}: output equals the input ({path}); choose another path"
                        )
                    raise OutputPathError(
                        f"{target.path}: the {target.role} must not overwrite the {role} ({path})"
                    )
            for other, other_ident in seen:
                if _same(target.path, ident, other.path, other_ident):
                    raise OutputPathError(
                        f"{target.path}: the {target.role} must not overwrite the {other.role}"
                    )
            for model in models:
                if target is not model and _is_data_of(target.path, model.path):
                    raise OutputPathError(
                        f"{target.path}: the {target.role} must not overwrite the output "
                        "model's external data"
                    )
            seen.append((target, ident))


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: equal for every name of one file (hard links,
    bind mounts, a case-insensitive file system); None when there is no file."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _same(a: Path, a_id: tuple[int, int] | None, b: Path, b_id: tuple[int, int] | None) -> bool:
    if a_id is not None and a_id == b_id:
        return True
    return os.path.realpath(a) == os.path.realpath(b)


def _is_data_of(path: Path, model: Path) -> bool:
    real, model_real = Path(os.path.realpath(path)), Path(os.path.realpath(model))
    return real.parent == model_real.parent and is_lconnx_data_name(model_real.name, real.name)


def _check_kind(target: Target) -> None:
    try:
        mode = target.path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputPathError(
            f"{target.path}: {target.role} is not usable: {exc.strerror}"
        ) from None
    if target.folder:
        if not stat.S_ISDIR(mode):
            raise OutputPathError(f"{target.path}: {target.role} exists and is not a folder")
    elif not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputPathError(f"{target.path}: {target.role} exists and is {kind}")


def _check_folder(target: Target) -> None:
    folder = Path(os.path.realpath(target.path.parent))  # where the entry lives
    if target.folder and target.path.is_dir():
        folder = Path(os.path.realpath(target.path))
    if not folder.is_dir():
        raise OutputPathError(f"{target.path}: folder does not exist ({folder})")
    with deferred_signals():  # a stop between creation and unlink would leave the probe
        try:
            fd, probe = tempfile.mkstemp(prefix=".lconnx-probe-", dir=folder)
        except OSError as exc:
            raise OutputPathError(
                f"{target.path}: cannot write in folder {folder}: {exc.strerror}"
            ) from None
        os.close(fd)
        os.unlink(probe)
