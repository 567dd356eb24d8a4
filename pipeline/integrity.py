"""SHA-256 records of the files that feed a reported number, written where a file is made and
checked by every reader before use.

A record is a sidecar ``<file>.sha256`` in ``sha256sum`` format (``<hex>  <name>``), so
``sha256sum -c ptb.test.npy.sha256`` checks a file by hand too; a directory of files gets one
``SHA256SUMS`` (same format, one line a file).  No torch, nothing heavy: the GPU node uses it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.files import write_atomic

SUMS = "SHA256SUMS"


class IntegrityError(RuntimeError):
    """A file does not match its recorded SHA-256 (or has no record): it must not be used."""


def sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sidecar(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def record(path: Path | str, digest: str | None = None) -> str:
    """Write ``path``'s sidecar (``digest`` if the caller already hashed the bytes); returns the digest."""
    path = Path(path)
    digest = digest or sha256(path)
    write_atomic(sidecar(path), f"{digest}  {path.name}\n")
    return digest


def recorded(path: Path | str) -> str | None:
    """The digest in ``path``'s sidecar, None where there is none (or it is unreadable)."""
    try:
        return sidecar(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


def verify(path: Path | str, what_to_do: str) -> str:
    """``path``'s digest if it matches its sidecar; else IntegrityError naming the file, both hashes
    and ``what_to_do``."""
    path = Path(path)
    expected = recorded(path)
    if expected is None:
        raise IntegrityError(f"{path} has no SHA-256 record ({sidecar(path).name} is missing): it cannot be "
                             f"checked; {what_to_do}")
    actual = sha256(path)
    if actual != expected:
        raise IntegrityError(f"{path} does not match its recorded SHA-256 (corrupt, truncated or edited): "
                             f"expected {expected}, actual {actual}; {what_to_do}")
    return actual


def record_dir(directory: Path | str, names: list[str]) -> dict[str, str]:
    """Write ``directory/SHA256SUMS`` for ``names``; returns name -> digest."""
    directory = Path(directory)
    digests = {name: sha256(directory / name) for name in sorted(names)}
    write_atomic(directory / SUMS, "".join(f"{d}  {n}\n" for n, d in digests.items()))
    return digests


def read_sums(path: Path | str) -> dict[str, str]:
    """name -> digest of a SHA256SUMS file (empty where it is missing)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    return {line.split(None, 1)[1].lstrip("*"): line.split()[0] for line in lines if line.strip()}


def verify_dir(directory: Path | str, names: list[str], what_to_do: str) -> dict[str, str]:
    """Check ``names`` in ``directory`` against its SHA256SUMS; name -> digest, else IntegrityError."""
    directory = Path(directory)
    sums = read_sums(directory / SUMS)
    if not sums:
        raise IntegrityError(f"{directory / SUMS} is missing: the files of {directory} cannot be checked; "
                             f"{what_to_do}")
    digests = {}
    for name in names:
        if name not in sums:
            raise IntegrityError(f"{directory / name} is not listed in {directory / SUMS}; {what_to_do}")
        actual = sha256(directory / name)
        if actual != sums[name]:
            raise IntegrityError(f"{directory / name} does not match its recorded SHA-256 in {directory / SUMS} "
                                 f"(corrupt, truncated or edited): expected {sums[name]}, actual {actual}; "
                                 f"{what_to_do}")
        digests[name] = actual
    return digests
