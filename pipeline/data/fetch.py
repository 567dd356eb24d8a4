"""Download (or copy from a local mirror) a dataset's files and verify their SHA-256.

A file is written as ``<name>.part`` and renamed only once its hash matches the pinned
one, so a failed or interrupted fetch never leaves a file that a later run would trust.

Sources are tried in order (see ``datasets:`` in config/config.yaml): ``files`` (one URL
per split) or ``archive`` (a .zip/.tgz URL and the member name of each split).  A mirror
directory, when given, replaces them: ``<mirror>/<file>`` or ``<mirror>/<file>.xz``.
"""
from __future__ import annotations

import argparse
import json
import lzma
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pipeline.integrity import sha256


class DataError(RuntimeError):
    """A data file is missing, truncated or does not match its pinned checksum."""


def verify(path: Path, expected: str, source: str = "") -> None:
    actual = sha256(path)
    if actual != expected:
        origin = f" (from {source})" if source else ""
        raise DataError(
            f"checksum mismatch for {path}{origin}:\n  expected sha256 {expected}\n  actual   sha256 {actual}\n"
            "The file is corrupt, truncated or a different version"
        )


def _install(part: Path, dest: Path, expected: str, source: str) -> None:
    try:
        verify(part, expected, source)
    except DataError as err:
        part.unlink(missing_ok=True)
        raise DataError(f"{err}; it was not kept.") from None
    part.replace(dest)


def _from_mirror(mirror: Path, rel: str, part: Path) -> str:
    plain, packed = mirror / rel, mirror / f"{rel}.xz"
    if plain.exists():
        shutil.copyfile(plain, part)
        return str(plain)
    if packed.exists():
        try:
            with lzma.open(packed, "rb") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (lzma.LZMAError, EOFError) as e:
            part.unlink(missing_ok=True)
            raise DataError(f"{packed} is not a complete xz file ({e}); it may be truncated") from e
        return str(packed)
    raise DataError(f"mirror {mirror.resolve()} has neither {rel} nor {rel}.xz")


def _download(url: str, dest: Path) -> None:
    print(f"[fetch] downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)


def _extract(archive: Path, member: str, part: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise DataError(f"{archive}: member {member} is not a file")
            with src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def fetch(spec: dict, out: Path, mirror: Path | None) -> None:
    """Fetch every split of one dataset into ``out/<file>``; ``spec`` is its ``datasets:`` entry."""
    splits = spec["splits"]
    for s in splits.values():
        (out / s["file"]).parent.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        for s in splits.values():
            dest = out / s["file"]
            part = dest.with_name(dest.name + ".part")
            _install(part, dest, s["sha256"], _from_mirror(mirror, s["file"], part))
            print(f"[fetch] {dest}: sha256 ok", file=sys.stderr)
        return
    errors, unreachable = [], []
    for source in spec["sources"]:
        try:
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                archive = None
                if source["kind"] == "archive":
                    archive = Path(tmp) / "archive"
                    _download(source["url"], archive)
                for split, s in splits.items():
                    dest = out / s["file"]
                    part = dest.with_name(dest.name + ".part")
                    if archive is not None:
                        _extract(archive, source["members"][split], part)
                        where = f"{source['url']}:{source['members'][split]}"
                    else:
                        where = source["urls"][split]
                        _download(where, part)
                    _install(part, dest, s["sha256"], where)
                    print(f"[fetch] {dest}: sha256 ok", file=sys.stderr)
            return
        except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError, DataError) as e:
            errors.append(f"- {source.get('url') or source['kind']}: {e}")
            unreachable.append(isinstance(e, urllib.error.URLError))
    what = "no source could be reached" if all(unreachable) else "every source failed"
    raise DataError(f"{what}:\n" + "\n".join(errors) + "\n" + OFFLINE)


OFFLINE = ("To run offline, put the six files in a folder DIR, plain or .xz:\n"
           "  DIR/ptb/ptb.{train,valid,test}.txt and DIR/wikitext-2/wiki.{train,valid,test}.tokens\n"
           "and add --config mirror=DIR: `./repro run --config mirror=DIR`.\n"
           "The tiny profile needs no download (its data are in the repository): `./repro run --profile profiles/tiny all`.")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, type=Path, help="a JSON file: the dataset's config entry (datasets:)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mirror", type=Path, default=None)
    p.add_argument("--verify", action="store_true", help="only check the files already in --out")
    a = p.parse_args(argv)
    try:
        spec = json.loads(a.spec.read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"[fetch] ERROR: cannot read the dataset spec {a.spec} ({err}); snakemake writes it: rerun the pipeline")
    try:
        if a.verify:
            for s in spec["splits"].values():
                path = a.out / s["file"]
                if not path.exists():
                    raise DataError(f"{path} is missing; rerun the pipeline to fetch it again")
                try:
                    verify(path, s["sha256"])
                except DataError as err:
                    path.unlink()  # so that the next run fetches it again
                    raise DataError(f"{err}; it was removed: rerun the pipeline to fetch it again.") from None
        else:
            fetch(spec, a.out, a.mirror)
    except DataError as e:
        sys.exit(f"[fetch] ERROR: {e}")


if __name__ == "__main__":
    main()
