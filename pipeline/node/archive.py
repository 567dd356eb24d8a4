"""What the node brings back: OUT rewritten, each file atomically, from the work directory as it is now
(at most 6 files, none in folders; runs.tgz's members listed with their SHA-256 for ``./repro import``)."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from pipeline.files import copy_atomic, write_atomic, write_json

MAX_OUT_BYTES = 16 * 2**20       # per file brought back from the node
LOG_TAIL_BYTES = 2**20           # a log longer than this is archived as its last MiB


def archive(work: Path, tail: int) -> tuple[bytes, dict[str, str]]:
    """runs.tgz's bytes (each log cut to its last ``tail`` bytes) and the SHA-256 of each member as archived."""
    buf, digests = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(path: Path, arcname: str) -> None:
            data = path.read_bytes()
            if path.suffix == ".log" and len(data) > tail:
                data = b"[... cut: last %d bytes follow]\n" % tail + data[-tail:]
            digests[arcname] = hashlib.sha256(data).hexdigest()
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
            tar.addfile(info, io.BytesIO(data))
        for path in sorted((work / "runs").rglob("*")):
            if path.is_file() and path.suffix in (".json", ".csv", ".log", ".npz"):  # .npz: scores per document
                add(path, "runs/" + str(path.relative_to(work / "runs")))
        for path in sorted((work / "logs").glob("*")):
            if path.is_file():
                add(path, f"logs/{path.name}")
        if (work / "env.json").is_file():
            add(work / "env.json", "logs/env.json")
    return buf.getvalue(), digests


def pack(summary: dict, work: Path, out: Path, device: str) -> None:
    """Write runs.tgz (its members' SHA-256 into ``summary["archive_sha256"]``), summary.json, the check,
    the benchmark CSVs and node.log to ``out``."""
    for tail in (LOG_TAIL_BYTES, 64 * 1024):
        data, digests = archive(work, tail)
        if len(data) <= MAX_OUT_BYTES:
            break
    # ./repro import checks every file of runs.tgz against these (an archive edited later is refused)
    summary["archive_sha256"] = digests
    write_atomic(out / "runs.tgz", data)
    write_json(out / "summary.json", summary, indent=1, default=str)
    for src in (work / "check.json", work / "bench" / f"kernel_{device}.csv", work / "bench" / f"scale_{device}.csv"):
        if src.is_file():
            copy_atomic(src, out / src.name)
    copy_atomic(work / "logs" / "node.log", out / "node.log")
