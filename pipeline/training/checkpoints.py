"""A run's checkpoint (``ckpt.pt``: weights, optimizer, lr schedule, RNG states, loop state) and its best
weights (``best.pt``), each written atomically with a SHA-256 record and checked before it is read.  A
checkpoint is resumed only when it has the run's fingerprint (the settings that change results, and the
input files); one that fails its record is set aside as ``*.corrupt``, one made otherwise (with its best
weights and the run's history) into ``stale-<UTC time>/``, and the run starts over."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import torch

from pipeline.config import EXECUTION_SETTINGS, Run, lock_holder, run_lock_file
from pipeline.integrity import IntegrityError, record, recorded, sha256, sidecar, verify
from pipeline.training.errors import TrainingError
from pipeline.training.progress import say


def save_atomic(obj, path: Path) -> str:
    """torch.save to ``path`` through a temporary file, with its SHA-256 record (``path.sha256``): the
    previous file stays until the new one is complete.  The record names the new bytes before they take
    the file's place, so a kill at any moment leaves either the previous file with its record, or the
    complete new file as ``.tmp`` with its record (``finish_interrupted_save`` moves it in; a kill
    between the rename and the record would instead leave a sound checkpoint looking corrupt).  torch
    serializes into memory first, so that a full disk is one OSError of ours (torch writing a file itself
    reports it as ``unexpected pos``), raised as TrainingError naming the path, with the partial file
    removed and the previous file and record as they were.  Returns the digest."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    digest = hashlib.sha256(data).hexdigest()
    tmp = pending(path)
    recorded_new = False
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        record(path, digest)
        recorded_new = True
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if recorded_new:  # the rename failed: the record goes back to the file that is there
            _restore_record(path)
        if err.errno == errno.ENOSPC:
            kept = f"; the previous {path.name} is kept" if path.exists() else ""
            raise TrainingError(f"no space left on device while writing {path}{kept}") from None
        raise TrainingError(f"cannot write {path}: {err.strerror or err}") from None
    return digest


class RunLocked(TrainingError):
    """Another process trains this run now (``run_lock``): this one stops without touching the run's files."""


NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}  # a file system without flock (Lustre, NFS)


@contextlib.contextmanager
def run_lock(checkpoint: Path, name: str):
    """Hold an exclusive lock on the run's checkpoint folder (``train.lock``, holding this process's pid and
    host) while training: a second trainer of the same run (a job started again while an orphaned one still
    trains, two snakemakes in two shells, a job on another node of a shared file system) stops at once naming
    the first one (``RunLocked``), instead of both writing one checkpoint.  The kernel drops the lock when the
    process ends, however it ends.  On a file system without flock the run trains unlocked, saying so; a folder
    it cannot write is a TrainingError."""
    path = run_lock_file(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise TrainingError(f"cannot open the run's lock {path}: {err.strerror or err}") from None
    try:
        locked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, host = lock_holder(checkpoint) or ("unknown", "")
            who, stop = f"pid {pid}", f"kill {pid}"
            if host not in ("", socket.gethostname()):  # a job on another node of a shared file system
                who, stop = f"pid {pid} on {host}", f"kill {pid} on {host}, or cancel its job"
            raise RunLocked(f"another process ({who}) is training {name} from {checkpoint} now (it holds {path}): "
                            f"wait for it to end, or stop it ({stop}) and run this again; two trainers of one run "
                            "would overwrite each other's checkpoint") from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise TrainingError(f"cannot lock {path}: {err.strerror or err}") from None
            locked = False
            say(f"[{name}] {path.parent} has no file locks ({err.strerror}): training without the run's lock; "
                "make sure no other process trains this run")
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def pending(path: Path) -> Path:
    """Where ``save_atomic`` writes ``path``'s next version before it takes the file's place."""
    return Path(path).with_suffix(".tmp")


def _restore_record(path: Path) -> None:
    try:
        if path.exists():
            record(path)
        else:
            sidecar(path).unlink(missing_ok=True)
    except OSError:
        pass  # the next load sets the checkpoint aside as corrupt: a restart, never a wrong number


def finish_interrupted_save(path: Path) -> bool:
    """Complete a ``save_atomic`` killed between its record and its rename: if ``path``'s record names the
    bytes of its ``.tmp`` (and not those of ``path``), that file is the newer complete checkpoint; move it
    in place.  True where it did."""
    path, tmp = Path(path), pending(path)
    expected = recorded(path)
    if expected is None or not tmp.is_file() or tmp.is_symlink():
        return False
    if sha256(tmp) != expected or (path.exists() and sha256(path) == expected):
        return False
    os.replace(tmp, path)
    return True


def rng_state(model, device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if isinstance(getattr(model, "generator", None), torch.Generator):
        state["model"] = model.generator.get_state()
    return state


def set_rng_state(model, device, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "model" in state:
        model.generator.set_state(state["model"])


def _digest(spec: dict, files) -> str:
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for f in files:
        if f is not None:
            h.update(Path(f).read_bytes())
    return h.hexdigest()


def fingerprint_of(run: Run, *files: Path | None) -> tuple[str, ...]:
    """What a checkpoint must match to be resumed: the run's settings but those that only say how it
    executes (``EXECUTION_SETTINGS``: device, scan backend, time cap; a run may go on under others), and its
    input files.  Returned first; after it, the fingerprints code before 2026-12-06 gave the same run (all
    settings; with each scan backend), so that a checkpoint written then is resumed, not set aside."""
    spec = run.result_spec()
    current = {part: {k: v for k, v in (spec[part] or {}).items() if k not in EXECUTION_SETTINGS}
               for part in ("settings", "train")}
    backends = ("torch", "tvm") if run.model == "vlnhmm" else (None,)  # the scan backends of that code
    earlier = [spec | {"settings": spec["settings"] | ({"backend": b} if b else {})} for b in backends]
    return tuple(dict.fromkeys(_digest(s, files) for s in [spec | current, *earlier]))


class Checkpoint:
    """``path`` (ckpt.pt) and best.pt beside it, for the run ``name`` with ``fingerprint``: one string, or
    several (:func:`fingerprint_of`): a checkpoint is written with the first and resumed with any."""

    def __init__(self, path: Path, fingerprint: str | tuple[str, ...], device: torch.device, name: str):
        self.path, self.best_path = Path(path), Path(path).with_name("best.pt")
        self.accepted = (fingerprint,) if isinstance(fingerprint, str) else tuple(fingerprint)
        self.fingerprint, self.device, self.name = self.accepted[0], device, name

    def load(self, model, opt, sched) -> dict | None:
        """Load the checkpoint into model, optimizer and lr schedule if it matches its SHA-256 record and has
        this run's fingerprint; returns the loop state (None: start over; a bad file is set aside)."""
        ckpt_path = self.path
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.best_path):
            if finish_interrupted_save(path):
                say(f"[{self.name}] {path.name}: its last write was interrupted after the new file was "
                    f"complete and recorded; {pending(path).name} moved in place")
        if not ckpt_path.exists():
            return None
        bad = ckpt_path  # the file being checked: a failure names it
        try:
            digest = verify(ckpt_path, "it is set aside")
            ckpt = torch.load(ckpt_path, map_location=self.device, weights_only=False)
            if ckpt["state"]["best_step"]:
                bad = self.best_path
                verify(self.best_path, "it is set aside")
        except Exception as err:  # IntegrityError, or a file torch cannot read at all
            return self._set_aside_corrupt(bad, err)
        if ckpt.get("fingerprint") not in self.accepted:
            return self._set_aside("was made with other settings or data")
        mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
        if mine != theirs:  # written by another version of the code (checked before anything is loaded)
            differ = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
            return self._set_aside(f"does not fit this code's model (e.g. {differ[0]})")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(model, self.device, ckpt["rng"])
        state = ckpt["state"]
        state.setdefault("resumed_from", []).append({"step": state["step"], "sha256": digest})
        return state

    def save(self, model, opt, sched, state: dict) -> None:
        save_atomic({"fingerprint": self.fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "rng": rng_state(model, self.device), "state": state}, self.path)

    def save_best(self, model) -> None:
        save_atomic(model.state_dict(), self.best_path)

    def load_best(self, model) -> None:
        """The best weights into ``model``, checked against their record first (``load``, at the run's
        start, has finished any write of them a kill interrupted)."""
        try:
            verify(self.best_path, f"delete {self.path.parent} and rerun the run")
        except IntegrityError as err:
            raise TrainingError(str(err)) from None
        model.load_state_dict(torch.load(self.best_path, map_location=self.device, weights_only=True))

    def kept(self, saved_step: int | None) -> str:
        """What a stopped run leaves to resume from (``saved_step``: the step of this process's last save)."""
        if saved_step is not None and self.path.exists():
            return f"the last checkpoint ({self.path}, step {saved_step:,}) is kept"
        return f"no checkpoint of this run was written yet ({self.path}): run again, it starts over"

    def _set_aside_corrupt(self, bad: Path, err: Exception) -> None:
        """A checkpoint (or its best weights) that does not match its record or cannot be read (``bad``: the
        file that failed): both kept beside as ``*.corrupt`` for a look, never loaded; the run starts from
        scratch."""
        kept = []
        for path in (self.path, self.best_path):
            for f in (path, sidecar(path)):
                if f.exists():
                    os.replace(f, f.with_name(f.name + ".corrupt"))
                    kept.append(f.name + ".corrupt")
        reason = str(err) if isinstance(err, IntegrityError) else f"torch cannot read it ({type(err).__name__}: {err})"
        say(f"[{self.name}] {bad} is corrupt and is not used: {reason}. Kept as {', '.join(kept)} "
            f"in {self.path.parent}; starting over from scratch")

    def _set_aside(self, why: str) -> None:
        """A sound checkpoint of other settings: it, its best weights, their records and the run's history
        move into a folder of their own (``stale-<UTC time>/``, never overwritten by a later one), from
        which they can be moved back as they are; the run starts over."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        folder = self.path.with_name(f"stale-{stamp}")
        n = 1
        while folder.exists():
            n += 1
            folder = self.path.with_name(f"stale-{stamp}-{n}")
        folder.mkdir()
        moved = []
        for f in (self.path, sidecar(self.path), self.best_path, sidecar(self.best_path),
                  self.path.with_name("train.log")):
            if f.exists():
                os.replace(f, folder / f.name)
                moved.append(f.name)
        say(f"[{self.name}] {self.path} {why}: kept in {folder} ({', '.join(moved)}), starting over.  To go on "
            f"with it instead: stop this run, restore the settings it was made with, and move those files back")


class BestInMemory:
    """A checkpoint for a process whose disk does not outlive it (the GPU node: nothing it writes but its results
    comes back): nothing is written or resumed; the best weights are kept as a copy on the device for the final
    scoring.  Saves a full write of the model, optimizer and best weights at every check."""

    def __init__(self, path: Path, name: str):
        self.path, self.name, self.best = Path(path), name, None

    def load(self, model, opt, sched) -> None:
        return None

    def save(self, model, opt, sched, state: dict) -> None:
        pass

    def kept(self, saved_step: int | None) -> str:
        return "this process keeps no checkpoint (--no-checkpoint)"

    def save_best(self, model) -> None:
        self.best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def load_best(self, model) -> None:
        if self.best is None:
            raise TrainingError(f"[{self.name}] no best weights were kept (no validation check ran)")
        model.load_state_dict(self.best)
