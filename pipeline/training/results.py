"""What a run writes for people and for the tables: ``curve.csv`` (one row per check) and ``metrics.json``
(status, perplexities, speed, settings, provenance, the SHA-256 of its inputs).  metrics.json is written
only while the job that started the run is there (a given-up job leaves no result behind), and each time with
``SHA256SUMS`` beside it (metrics.json, docs.npz, curve.csv): the tables check a run's files against it."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from pipeline.config import Run
from pipeline.files import write_atomic, write_json
from pipeline.integrity import record_dir
from pipeline.lifetime import parent_is
from pipeline.provenance import CPU_NAME, provenance
from pipeline.training.errors import TrainingError

JOB_PARENT: int | None = None  # the pid of the job's shell when run as `python -m pipeline.training.train` (main)
RECORDED = ("metrics.json", "docs.npz", "curve.csv")  # a run's files that feed the tables: in its SHA256SUMS


def run_provenance(device: torch.device, segments: list[dict] | None = None) -> dict:
    """provenance() with torch and the device; ``commit`` that of the code this process started with (its
    segment's, the last one), not the checkout's at the time of writing, which may have moved on since."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else CPU_NAME
    record = provenance() | {"torch": torch.__version__, "device_name": name}
    if segments and segments[-1].get("commit"):
        record["commit"] = segments[-1]["commit"]
    return record


def write_curve(curve: list[dict], path: Path) -> None:
    """curve.csv, atomically: a reader beside the run (the GPU node polls it) sees whole rows only."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(curve[0]))
    writer.writeheader()
    writer.writerows(curve)
    write_atomic(path, text.getvalue())


def run_metrics(run: Run, model, device: torch.device, params: int, state: dict, steps_per_epoch: int,
                inputs: dict, status: str, valid_ppl: float | None = None, test_ppl: float | None = None,
                eval_ms: float | None = None, precision: dict | None = None) -> dict:
    """metrics.json's record of a run in loop state ``state`` (valid ppl: the best check's unless given)."""
    st, cfg = state, run.train
    epochs = st["step"] / steps_per_epoch
    best = next((c for c in st["curve"] if c["step"] == st["best_step"]), None)
    metrics = {
        "run": run.key, "model": run.model, "params": params, "status": status,
        "train_ppl": best and best["train_ppl"],
        "valid_ppl": valid_ppl if valid_ppl is not None else best and best["valid_ppl"],
        "test_ppl": test_ppl,
        "train_ppl_note": "running training perplexity (under dropout) of the check with the best valid ppl",
        "best_step": st["best_step"], "steps": st["step"], "epochs": round(epochs, 4),
        "steps_per_epoch": steps_per_epoch, "wall_seconds": round(st["wall"], 1),
        "seconds_per_epoch": round(st["wall"] / epochs, 2) if epochs else None,
        "eval_ms_per_batch": None if eval_ms is None else round(eval_ms, 3),
        "eval_batch": [cfg.eval_batch_size, cfg.bptt], "device": device.type,
        "backend": getattr(run.settings, "backend", "torch"),
        "transition_path": getattr(model, "transition_path", None),
        "matmul_precision": cfg.matmul_precision,
        "cpu_precision": precision,
        "segments": state.get("segments", []),
        "tested_weights": f"{cfg.test_weights} (test_weights)",
        "spec": run.result_spec(), "provenance": run_provenance(device, state.get("segments")),
        "inputs": inputs | {"resumed_from": st.get("resumed_from", [])},
    }
    metrics["device_name"] = metrics["provenance"]["device_name"]
    kinds = machine_kinds(metrics["segments"])
    if len(kinds) > 1:  # a run resumed on another machine kind or in another precision says so
        metrics["spans"] = [", ".join(str(v) for v in k if v) for k in sorted(kinds, key=str)]
    return metrics


def machine_kinds(segments: list[dict]) -> set[tuple]:
    """The (device or CPU model, vector unit, bf16 kind, precision) of each segment; the vector unit only where
    every segment records it (segments written before 2026-12-07 do not: a run resumed on the same machine
    since then must not read as spanning two)."""
    units = all(s.get("vector_unit") for s in segments)
    return {(s.get("cpu_model") or s.get("device_name"), s.get("vector_unit") if units else None, s.get("bf16_kind"),
             s["precision"]) for s in segments}


def write_metrics(out: Path, metrics: dict) -> None:
    """metrics.json, only while the job that started this process is there: a trainer whose job was
    given up (its shell killed; pipeline.lifetime stops it too) must not leave a result behind."""
    if JOB_PARENT is not None and not parent_is(JOB_PARENT):
        raise TrainingError(f"the job that started this run (pid {JOB_PARENT}) is gone: stopping without "
                            f"writing {out / 'metrics.json'}")
    write_json(out / "metrics.json", metrics)
    record_dir(out, [name for name in RECORDED if (out / name).is_file()])
