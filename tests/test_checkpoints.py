"""pipeline.training.checkpoints alone (no training loop): a checkpoint resumes only with its record and
fingerprint; anything else is set aside and the run starts over."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import pipeline.training.checkpoints as checkpoints
from pipeline.training.checkpoints import Checkpoint
from pipeline.training.errors import TrainingError


def parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.25, patience=1)
    return model, opt, sched


def test_save_then_load_restores_weights_optimizer_schedule_and_state(tmp_path):
    model, opt, sched = parts(0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step(1.0)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x")
    ckpt.save(model, opt, sched, {"step": 7, "best_step": 0})
    other, other_opt, other_sched = parts(1)
    state = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x").load(other, other_opt, other_sched)
    assert state["step"] == 7 and state["resumed_from"][0]["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    saved, loaded = opt.state_dict(), other_opt.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() and saved["param_groups"] == loaded["param_groups"]
    for i, moments in saved["state"].items():  # step and both Adam moments of every parameter
        assert moments.keys() == loaded["state"][i].keys()
        assert all(torch.equal(v, loaded["state"][i][k]) for k, v in moments.items()), i
    assert other_sched.state_dict() == sched.state_dict()


def test_other_fingerprint_is_set_aside_as_stale_and_never_overwritten(tmp_path):
    """Each checkpoint of other settings moves, with its best weights, records and history, into a folder of its
    own: a second change of settings keeps the first one's; moved back, it resumes."""
    model, opt, sched = parts(0)
    cpu = torch.device("cpu")
    for step, fingerprint in ((7, "a"), (9, "b")):
        ckpt = Checkpoint(tmp_path / "ckpt.pt", fingerprint, cpu, "ptb/x")
        ckpt.save(model, opt, sched, {"step": step, "best_step": step})
        ckpt.save_best(model)
        (tmp_path / "train.log").write_text(f"run {fingerprint}\n")
    assert Checkpoint(tmp_path / "ckpt.pt", "c", cpu, "ptb/x").load(model, opt, sched) is None  # b set aside
    Checkpoint(tmp_path / "ckpt.pt", "c", cpu, "ptb/x").save(model, opt, sched, {"step": 1, "best_step": 0})
    assert Checkpoint(tmp_path / "ckpt.pt", "a", cpu, "ptb/x").load(model, opt, sched) is None  # c set aside
    folders = sorted(tmp_path.glob("stale-*"))
    assert len(folders) == 2 and not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "best.pt").exists()
    assert sorted(p.name for p in folders[0].iterdir()) == ["best.pt", "best.pt.sha256", "ckpt.pt", "ckpt.pt.sha256",
                                                            "train.log"]
    assert (folders[0] / "train.log").read_text() == "run b\n"
    for f in folders[0].iterdir():  # b, moved back, resumes where it was
        f.rename(tmp_path / f.name)
    state = Checkpoint(tmp_path / "ckpt.pt", "b", cpu, "ptb/x").load(model, opt, sched)
    assert state is not None and state["step"] == 9


def test_execution_settings_keep_the_fingerprint_and_older_fingerprints_resume(tmp_path):
    """A run's fingerprint ignores how it executes (scan backend, device, time cap): a run may go on under
    others.  A checkpoint written by the code before (all settings hashed, with either scan backend then)
    is resumed and then rewritten with today's fingerprint; a setting that changes results still stops it."""
    import dataclasses
    import hashlib
    import json
    from pipeline.config import resolve_run

    run = resolve_run({"name": "v", "dataset": "ptb", "model": "vlnhmm", "num_states": 64, "num_clusters": 4})
    def changed(part, **kw):
        return dataclasses.replace(run, **{part: dataclasses.replace(getattr(run, part), **kw)})
    fps = checkpoints.fingerprint_of(run)
    assert checkpoints.fingerprint_of(changed("settings", backend="matmul"))[0] == fps[0]
    assert checkpoints.fingerprint_of(changed("train", device="cuda", max_seconds=60))[0] == fps[0]
    assert checkpoints.fingerprint_of(changed("settings", num_clusters=8))[0] != fps[0]
    assert checkpoints.fingerprint_of(changed("train", lr=0.5))[0] != fps[0]
    older = run.result_spec()
    older["settings"]["backend"] = "tvm"   # written under the TVM backend by the code before
    older_fp = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
    now = checkpoints.fingerprint_of(changed("settings", backend="matmul"))
    assert older_fp in now and older_fp != now[0]
    model, opt, sched = parts(0)
    Checkpoint(tmp_path / "ckpt.pt", older_fp, torch.device("cpu"), "ptb/v").save(model, opt, sched,
                                                                                 {"step": 3, "best_step": 0})
    ckpt = Checkpoint(tmp_path / "ckpt.pt", now, torch.device("cpu"), "ptb/v")
    assert ckpt.load(model, opt, sched)["step"] == 3
    ckpt.save(model, opt, sched, {"step": 4, "best_step": 0})
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["fingerprint"] == now[0]
    other = checkpoints.fingerprint_of(changed("train", lr=0.5))
    assert Checkpoint(tmp_path / "ckpt.pt", other, torch.device("cpu"), "ptb/v").load(model, opt, sched) is None


def test_a_changed_byte_sets_it_aside_as_corrupt(tmp_path):
    model, opt, sched = parts(0)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x")
    ckpt.save(model, opt, sched, {"step": 1, "best_step": 0})
    data = bytearray((tmp_path / "ckpt.pt").read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "ckpt.pt").write_bytes(bytes(data))
    assert ckpt.load(model, opt, sched) is None
    assert (tmp_path / "ckpt.pt.corrupt").exists() and not (tmp_path / "ckpt.pt").exists()


def test_a_corrupt_best_pt_is_named_as_the_corrupt_file(tmp_path, capsys):
    """best.pt failing its record sets both files aside; the message leads with best.pt, not ckpt.pt."""
    model, opt, sched = parts(0)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x")
    ckpt.save(model, opt, sched, {"step": 2, "best_step": 1})
    ckpt.save_best(model)
    (tmp_path / "best.pt").write_bytes((tmp_path / "best.pt").read_bytes() + b"\0")
    assert ckpt.load(model, opt, sched) is None
    said = capsys.readouterr()
    said = said.out + said.err
    assert f"[ptb/x] {tmp_path / 'best.pt'} is corrupt and is not used: {tmp_path / 'best.pt'} does not match" in said
    assert f"{tmp_path / 'ckpt.pt'} is corrupt" not in said
    assert (tmp_path / "best.pt.corrupt").exists() and (tmp_path / "ckpt.pt.corrupt").exists()


def test_best_weights_are_checked_before_they_are_loaded(tmp_path):
    model, _, _ = parts(0)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x")
    ckpt.save_best(model)
    other, _, _ = parts(1)
    ckpt.load_best(other)
    assert torch.equal(other.weight, model.weight)
    (tmp_path / "best.pt").write_bytes((tmp_path / "best.pt").read_bytes() + b"\0")
    with pytest.raises(TrainingError, match="best.pt"):
        ckpt.load_best(other)


class Killed(BaseException):
    """Stands for SIGKILL at one instant of a write: nothing after it runs, no handler cleans up."""


@pytest.mark.parametrize("instant", ["before the record", "between the record and the rename"])
def test_a_kill_during_a_save_loses_no_complete_checkpoint(tmp_path, monkeypatch, instant):
    """Killed before the new file's record: the previous checkpoint resumes.  Killed after the record but
    before the rename: the new file (complete, as .tmp) is moved in and resumes; neither is 'corrupt'."""
    model, opt, sched = parts(0)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x")
    ckpt.save(model, opt, sched, {"step": 1, "best_step": 0})

    def die(*args, **kwargs):
        raise Killed

    if instant == "before the record":
        monkeypatch.setattr(checkpoints, "record", die)
    else:
        monkeypatch.setattr(checkpoints, "os", SimpleNamespace(fsync=os.fsync, replace=die))
    with pytest.raises(Killed):
        ckpt.save(model, opt, sched, {"step": 2, "best_step": 0})
    monkeypatch.undo()
    assert (tmp_path / "ckpt.tmp").exists()  # the new file, complete, not yet in place

    state = Checkpoint(tmp_path / "ckpt.pt", "fp", torch.device("cpu"), "ptb/x").load(*parts(1))
    assert state is not None and state["step"] == (1 if instant == "before the record" else 2)
    assert not list(tmp_path.glob("*.corrupt"))


def test_a_second_trainer_of_a_run_stops_with_the_first_ones_pid(tmp_path):
    """run_lock: while one trainer holds the run's folder, another (here a second open of the lock, as a
    second process makes) is refused naming the holder; once the first ends, the run may be trained again."""
    from pipeline.training.checkpoints import run_lock
    from pipeline.training.errors import TrainingError
    ckpt = tmp_path / "run" / "ckpt.pt"
    with run_lock(ckpt, "ptb/x"):
        assert (tmp_path / "run" / "train.lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        with pytest.raises(TrainingError, match=f"another process \\(pid {os.getpid()}\\) is training ptb/x.*"
                                                f"\\(kill {os.getpid()}\\)"):
            with run_lock(ckpt, "ptb/x"):
                pass
        (tmp_path / "run" / "train.lock").write_text("4242 node17\n")  # held by a job on another node
        with pytest.raises(TrainingError, match="another process \\(pid 4242 on node17\\) is training ptb/x.*"
                                                "kill 4242 on node17, or cancel its job"):
            with run_lock(ckpt, "ptb/x"):
                pass
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / "run" / "train.lock")],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "BlockingIOError" in probe.stderr  # another process is kept out too
    with run_lock(ckpt, "ptb/x"):  # released
        pass


def test_a_file_system_without_locks_trains_unlocked_and_an_unwritable_lock_is_a_clear_error(tmp_path, monkeypatch,
                                                                                            capsys):
    import errno

    from pipeline.training.checkpoints import run_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(checkpoints.fcntl, "flock", no_locks)
    with run_lock(tmp_path / "ckpt.pt", "ptb/x"):
        pass
    assert "has no file locks (No locks available): training without the run's lock" in capsys.readouterr().out

    def denied(fd, op):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(checkpoints.fcntl, "flock", denied)
    with pytest.raises(TrainingError, match=f"cannot lock {tmp_path / 'train.lock'}: Permission denied"):
        with run_lock(tmp_path / "ckpt.pt", "ptb/x"):
            pass
