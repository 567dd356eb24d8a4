"""Small file helpers of the pipeline: JSON read leniently, files replaced atomically.

No torch and nothing heavy: the GPU node's own process (:mod:`pipeline.node`) uses them.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def shown_path(path: Path) -> Path:
    """``path`` as a message shows it: relative to the repository where it lies inside, else whole."""
    path = Path(path).resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None where it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary file beside it: a reader sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any, indent: int = 2, default=None) -> None:
    """``obj`` as JSON (one trailing newline), written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, default=default) + "\n")


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file beside ``dst``."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
