"""``lconnx optimize FOLDER OUT_FOLDER``: a model folder as Hugging Face optimum and
``save_pretrained`` write it (``model.onnx`` with its data, ``config.json``, tokenizer files).
The optimized model goes to OUT_FOLDER under the same name, every other file beside it is
copied unchanged, so the folder loads as before (``ORTModel.from_pretrained(OUT_FOLDER)``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lconnx.errors import ModelLoadError, OutputPathError

#: The file optimum and transformers.onnx write; taken when a folder holds several models.
DEFAULT_MODEL = "model.onnx"


@dataclass
class FolderJob:
    """What one folder run reads, writes and copies."""

    model: Path
    output_model: Path
    copies: list[tuple[Path, Path]] = field(default_factory=list)
    created: bool = False  # OUT_FOLDER was made by this run (removed again if it fails)


def plan_folder(source: Path, target: Path) -> FolderJob:
    """Pick the model, list the files to copy; nothing is written."""
    from lconnx.io import external_data_paths, parse_model

    models = sorted(p for p in source.iterdir() if p.suffix == ".onnx" and p.is_file())
    if not models:
        raise ModelLoadError(f"{source}: a folder with no .onnx model")
    chosen = source / DEFAULT_MODEL if (source / DEFAULT_MODEL).is_file() else None
    if chosen is None:
        if len(models) > 1:
            names = ", ".join(p.name for p in models)
            raise ModelLoadError(
                f"{source}: holds {len(models)} models ({names}) and no {DEFAULT_MODEL}; "
                "name the one to optimize"
            )
        chosen = models[0]
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"{target}: the input is a folder, so the output must be a folder")
    if target.exists() and os.path.samefile(target, source):
        raise OutputPathError(f"{target}: output folder equals the input folder")
    data = {p.resolve() for p in external_data_paths(parse_model(chosen, weights=False), chosen)}
    job = FolderJob(model=chosen, output_model=target / chosen.name)
    for path in sorted(source.iterdir()):
        if path.is_file() and path != chosen and path.resolve() not in data:
            job.copies.append((path, target / path.name))
    return job


def make_target(job: FolderJob, target: Path) -> None:
    """Create OUT_FOLDER (its parent must exist), remembering whether this run made it."""
    if target.is_dir():
        return
    if not target.parent.is_dir():
        raise OutputPathError(f"{target}: folder does not exist ({target.parent})")
    try:
        target.mkdir()
    except OSError as exc:
        raise OutputPathError(f"{target}: cannot create the folder: {exc.strerror}") from None
    job.created = True


def copy_files(job: FolderJob) -> None:
    """Copy config, tokenizer and other files, each atomically and with the usual mode."""
    from lconnx.io import default_mode, temp_folder

    for source, target in job.copies:
        with temp_folder(target.parent, target) as tmp:
            staged = tmp / "file"
            try:
                shutil.copyfile(source, staged)
                os.chmod(staged, default_mode())
                os.replace(staged, target)
            except OSError as exc:
                raise OutputPathError(f"{target}: copy failed: {exc.strerror}") from None


def undo(job: FolderJob, target: Path) -> None:
    """A failed run leaves no folder it created."""
    if job.created:
        shutil.rmtree(target, ignore_errors=True)
