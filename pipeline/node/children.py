"""The node's child processes: each phase and run is ``python -m ...`` in its own process group, with the
bundle's TVM runtime and this tree on its path, a log file, a time limit, and SIGINT then SIGKILL to stop it.
A child dies with the node (PR_SET_PDEATHSIG)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.lifetime import die_with_parent

ROOT = Path(__file__).resolve().parents[2]


def log_tail(path: Path, nbytes: int, lines: int) -> list[str]:
    """The last ``lines`` lines within the last ``nbytes`` bytes of a log."""
    return path.read_bytes()[-nbytes:].decode(errors="replace").strip().splitlines()[-lines:]


def free_mib(device: str) -> float | None:
    """Free memory where the runs allocate: the GPU's (nvidia-smi), else the host's."""
    if device == "cuda":
        smi = shutil.which("nvidia-smi")
        if not smi:
            return None
        gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
        try:
            out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i",
                                  gpu if gpu.isdigit() else "0"], capture_output=True, text=True, timeout=10)
            return float(out.stdout.split()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Children:
    """The child processes going now (``procs``: pid -> Popen)."""

    def __init__(self, bundle: Path, commit_label: str | None, logs: Path):
        self.bundle, self.commit_label, self.logs = bundle, commit_label, logs
        self.procs: dict[int, subprocess.Popen] = {}

    def env(self, threads: int | None = None) -> dict:
        """Environment of every child: the bundle's TVM runtime and this tree on the path, the commit."""
        env = dict(os.environ)
        paths = [str(self.bundle / "tvm-runtime"), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
                   REPRO_COMMIT=str(self.commit_label or "unknown"))
        # Triton's kernels compiled once and shared by every child, in the job's folder (its default is under
        # $HOME, which a batch node may not let it write: the fused normalizer would then fall back)
        env.setdefault("TRITON_CACHE_DIR", str(self.logs.parent / "triton-cache"))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def spawn(self, args: list[str], log_path: Path, threads: int | None = None) -> tuple[subprocess.Popen, object]:
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env(threads), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=lambda parent=os.getpid(): die_with_parent(signal.SIGKILL, parent))
        self.procs[proc.pid] = proc
        return proc, log

    def forget(self, proc: subprocess.Popen) -> None:
        self.procs.pop(proc.pid, None)

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        """SIGINT to the child's process group, SIGKILL after ``grace`` seconds."""
        self.stop_together([proc], grace)

    def stop_together(self, procs: list[subprocess.Popen], grace: float) -> None:
        """SIGINT to every child's process group at once, SIGKILL to those still alive ``grace`` seconds
        later (then up to 5 s for them to go): stopping N children takes one grace period, not N."""
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
            alive = [p for p in procs if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for p in alive:
                try:
                    p.wait(timeout=max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    pass
        for p in procs:
            self.forget(p)

    def stop_all(self, grace: float) -> None:
        self.stop_together(list(self.procs.values()), grace)

    def call(self, name: str, args: list[str], limit: float, grace: float, threads: int | None = None) -> dict:
        """Run ``python ARGS`` for at most ``limit`` seconds (then ``grace`` seconds to stop), output in
        <logs>/<name>.log."""
        log_path = self.logs / f"{name}.log"
        start = time.monotonic()
        proc, log = self.spawn(args, log_path, threads)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(limit, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop(proc, grace=grace)
            rc = proc.returncode
        except BaseException:  # Interrupted: the child goes too
            self.stop(proc, grace=3.0)
            raise
        finally:
            log.close()
            self.forget(proc)
        tail = log_tail(log_path, 600, 3)
        return {"rc": rc, "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out, "tail": tail}
