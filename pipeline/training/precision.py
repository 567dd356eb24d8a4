"""Which precision a CPU training step runs in: the setting ``cpu_precision`` resolved on this CPU.

    fp32   every product in fp32 (the reference)
    bf16   the products of the MLPs, embeddings, LSTM and output layer in bf16 (fp32 accumulation);
           log-space scans, normalizers, the loss and the optimizer's weights stay fp32
           (baselines.output, baselines.ff, baselines.lstm, hmm.model ``matmul_dtype``)
           (only on a CPU with native bf16: elsewhere the run stops at once, naming auto and fp32)
    auto   bf16 where this CPU has native bf16 (pipeline.cpu.kind: AMX or AVX512-BF16), the model's
           bf16 step was measured faster than its fp32 step on a CPU of that kind (MEASURED below:
           ``python -m bench.cpu``; on AMX an earlier plain-autocast measurement) and its bf16 training kept the first epoch's valid ppl within
           1 % of fp32's (NOT_EQUAL: ``python -m bench.first_epoch``); fp32 everywhere else, and it
           says why

Evaluation is always fp32, so a reported perplexity is exact for the trained weights.  A GPU run
ignores the setting (``matmul_precision`` governs there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline import cpu
from pipeline.training.errors import TrainingError

# (model, bf16 kind) -> (fp32 step ms / bf16 step ms, where measured): the bf16 rows' `ratio` of the
# committed results/bench/cpu_<kind>.csv (tests/test_cpu_precision.py keeps the two equal)
MEASURED: dict[tuple[str, str], tuple[float, str]] = {
    ("ff", "avx512_bf16"): (1.92, "bench.cpu, AMD EPYC Zen 4, 2 threads, 2026-12-06"),
    ("lstm", "avx512_bf16"): (1.66, "bench.cpu, AMD EPYC Zen 4, 2 threads, 2026-12-06"),
    ("vlnhmm", "avx512_bf16"): (1.23, "bench.cpu, 1,024 states, M = 8, AMD EPYC Zen 4, 2 threads, 2026-12-06"),
    # AMX machines: plain autocast steps measured before bench.cpu existed (Intel Xeon, 2 threads), not yet by it
    ("ff", "amx"): (1.74, "plain autocast, Intel Xeon AMX, 2 threads"),
    ("lstm", "amx"): (1.84, "plain autocast, Intel Xeon AMX, 2 threads"),
}
# models whose bf16 training did not stay within 1 % of fp32's first-epoch valid ppl (bench.first_epoch):
# auto keeps them in fp32 on every CPU (cpu_precision: bf16 still forces bf16 on a CPU with native bf16)
NOT_EQUAL: dict[str, str] = {
    "vlnhmm": "bf16 training's first-epoch valid ppl was 1.15 % above fp32's (full PTB, 1,024 states, M = 8, "
              "seed 1111; bench.first_epoch on an AMD EPYC Zen 4), beyond the 1 % allowed",
}
FASTER = 1.05  # auto takes bf16 only where it measured at least 5 % faster


@dataclass(frozen=True)
class Precision:
    name: str       # "fp32" | "bf16"
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The models' ``matmul_dtype``: bf16, or None (the weights' own, fp32)."""
        return torch.bfloat16 if self.name == "bf16" else None

    def record(self, setting: str) -> dict:
        return {"setting": setting, "used": self.name, "reason": self.reason}


def choose(setting: str, model: str, device: torch.device) -> Precision:
    """The precision of ``model``'s training step on ``device`` for ``cpu_precision: setting``."""
    if device.type != "cpu":
        return Precision("fp32", f"{device.type}: cpu_precision does not apply (matmul_precision does)")
    kind = cpu.kind()
    if setting == "fp32":
        return Precision("fp32", "cpu_precision: fp32")
    if setting == "bf16":
        if kind == "none":
            raise TrainingError(
                f"cpu_precision: bf16 needs a CPU with native bf16 (AMX-BF16 or AVX512-BF16); this "
                f"{cpu.model_name()} has neither: its bf16 products are emulated (a 4096 x 64 x 10,000 product "
                "8x slower than fp32 on a Zen 3) and oneDNN builds no bf16 LSTM for it.  Use cpu_precision: "
                "auto (fp32 here) or fp32")
        return Precision("bf16", "cpu_precision: bf16")
    if kind == "none":
        return Precision("fp32", f"auto: {cpu.model_name()} has no native bf16 (neither AMX-BF16 nor AVX512-BF16)")
    if model in NOT_EQUAL:
        return Precision("fp32", f"auto: {NOT_EQUAL[model]}")
    measured = MEASURED.get((model, kind))
    if measured is None:
        return Precision("fp32", f"auto: bf16 not measured for {model} on a {kind} CPU "
                                 "(measure it with `python -m bench.cpu`)")
    ratio, where = measured
    if ratio < FASTER:
        return Precision("fp32", f"auto: bf16 step only {ratio:.2f}x the fp32 speed for {model} on {kind} ({where})")
    return Precision("bf16", f"auto: {kind} CPU, bf16 step {ratio:.2f}x faster than fp32 for {model} ({where})")
