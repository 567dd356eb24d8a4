"""Every shell command the documentation gives works as written.

The commands are read from the Markdown files (the front page, the folders' READMEs and every page
under docs/; fenced blocks and inline code that start with ``./repro``, ``snakemake``, ``python``, or
environment assignments before one of them), so a command added to any of them is tested without a
line here.  Each runs in its documented form:

- snakemake and ``./repro run``: a dry run (``-n`` put first, so the words after it stay as written);
  ``--report`` for real on the tiny profile once the tiny pipeline has run (it reads its outputs);
- ``./repro setup``: for real (idempotent); ``./repro test``: this suite itself, not run from inside it;
- ``./repro bundle|import|status`` and ``python -m MODULE``: the module's own argument parser reads the words
  (its dry run: an unknown option, a missing required one or a bad value fails); ``python -m pytest``
  collects; ``python -m pipeline.config --doc`` runs and must give config/README.md.

Placeholders (``OUT``, ``DIR``, ``ARGS``, ``<dataset>``, ``<name>``, ``$OUT``) get example values.
"""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_retrain_args

ROOT = Path(__file__).resolve().parent.parent
# the front page, the READMEs of folders, and every page under docs/ (a new page is read without a line here)
DOCS = ["README.md", "results/README.md", "config/README.md", "hmm/kernels/README.md", ".test/README.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
STARTS = ("./repro", "snakemake", "python", ".venv/bin/")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
PLACEHOLDERS = {"<dataset>": "ptb", "<name>": "kn5", "<target>": "llvm", "$OUT": "/tmp/repro-doc-out",
                "site.yaml": "tests/slurm/site.yaml",  # a site file, as the README shows one
                "OUT": "/tmp/repro-doc-out", "DIR": "/tmp/repro-doc-dir", "ARGS": ""}
MODULE_OF = {"bundle": "pipeline.node.bundle", "import": "pipeline.node.importer",
             "status": "pipeline.training.status"}
# documented commands that are not run here, each with the reason (kept short: every other one runs)
NOT_RUN = {
    "./repro test": "it is this test suite (CI runs it)",
    "REPRO_TORCH=cuda ./repro setup": "installs torch's CUDA build (GBs) on a GPU machine",
}


def _is_command(text: str) -> bool:
    words = text.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return bool(words) and words[0].startswith(STARTS)


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every command in the documentation, comments stripped, lines joined."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if _is_command(line):
                    found.append((doc, line))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose):
            if _is_command(span.strip()):
                found.append((doc, span.strip()))
    return list({command: (doc, command) for doc, command in reversed(found)}.values())[::-1]  # once each


def _words(command: str) -> tuple[dict, list[str]]:
    """Environment assignments and the words of ``command``, placeholders filled in."""
    command = command.split(" > ")[0]
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(command)]
    for key, value in PLACEHOLDERS.items():
        if key.startswith("<"):
            words = [w.replace(key, value) for w in words]
    env = {}
    while words and ENV_ASSIGNMENT.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, [w for w in words if w]


class ParsedOnly(Exception):
    """Raised once the module's parser has read its arguments: nothing more of it runs."""


def parse_only(module: str, args: list[str], monkeypatch) -> None:
    """Run ``python -m module args`` up to its argument parsing (fails on a bad option or value)."""
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        real(self, argv, namespace)
        raise ParsedOnly

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(ParsedOnly):
        runpy.run_module(module, run_name="__main__", alter_sys=False)


def run(words: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    path = f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=os.environ | {"PATH": path} | env)
    assert proc.returncode == 0, f"{' '.join(words)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def tiny_outputs():
    """The tiny pipeline's outputs (what the documented --report commands read); a no-op once built."""
    run([sys.executable, "-m", "snakemake", "--profile", "profiles/tiny", "all", *tiny_retrain_args()], {}, timeout=1800)


COMMANDS = documented_commands()


STATUS = re.compile(r"<!-- BEGIN status[^\n]*-->\n## Status of the paper's numbers\n(.+?)<!-- END status -->", re.S)
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces to dashes)."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)}


def test_readme_is_a_front_page_that_links_every_docs_page():
    """About 150 lines: set-up, what a run produces, the delimited status of the paper's numbers, links on;
    the reference lives in docs/, every page of it linked from here, every local link resolving."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 170, "the README is the front page: move reference material to docs/"
    assert re.search(r"```bash\n\./repro run .*\n\./repro test ", readme), "the two set-up commands"
    assert STATUS.search(readme), "the status section, between its markers"
    pages = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 8 and set(pages) <= set(DOCS)
    assert not [p for p in pages if f"]({p})" not in readme], "link every docs page from the README"
    broken = []
    for doc in DOCS:
        for target in LINK.findall((ROOT / doc).read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (ROOT / doc).parent / path if path else ROOT / doc
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file.read_text())):
                broken.append(f"{doc}: {target}")
    assert not broken, broken


def test_the_documentation_gives_commands():
    kinds = {words[0] if words[0] != "./repro" else f"./repro {words[1]}"
             for words in (_words(c)[1] for _, c in COMMANDS if _words(c)[1])}
    assert len(COMMANDS) >= 30 and {"./repro run", "snakemake", "python"} <= {k.split()[0] if k.startswith(
        ("snakemake", "python")) else k for k in kinds}, kinds


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy of an imported module
@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}: {c}" for d, c in COMMANDS])
def test_documented_command_works_as_written(doc, command, request, monkeypatch):
    if command in NOT_RUN:
        pytest.skip(f"{command}: {NOT_RUN[command]}")
    env, words = _words(command)
    exe = words[0]
    if exe == "./repro" and words[1:2] in (["setup"], ["--help"]):
        run(words, env)
    elif exe == "./repro" and len(words) > 1 and words[1] in MODULE_OF:
        parse_only(MODULE_OF[words[1]], words[2:], monkeypatch)
    elif exe in ("./repro", "snakemake"):
        snakemake_args = words[2:] if exe == "./repro" else words[1:]
        head = words[:2] if exe == "./repro" else [str(ROOT / ".venv/bin/snakemake")]
        if "--report" in snakemake_args:
            if "profiles/tiny" not in snakemake_args:
                pytest.skip("a report of the full config reads the full pipeline's outputs; the tiny one runs")
            request.getfixturevalue("tiny_outputs")
            run(head + snakemake_args, env)
        else:
            run(head + ["-n"] + snakemake_args, env)
    elif exe.startswith("python"):
        assert words[1] == "-m", command
        module, args = words[2], words[3:]
        if module == "pytest":
            run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], env)
        elif module == "pipeline.config" and args == ["--doc"]:
            out = run([sys.executable, "-m", module, *args], env)
            assert out.stdout == (ROOT / "config/README.md").read_text()
        else:
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            parse_only(module, args, monkeypatch)
    else:
        raise AssertionError(f"{doc}: no way to run {command!r} here: add it to this test")


# ---- commands the code prints as advice (in error messages and logs) -------------------------------

CODE = [*sorted(str(p.relative_to(ROOT)) for pkg in ("pipeline", "hmm", "bench", "baselines")
                for p in (ROOT / pkg).rglob("*.py")),
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "workflow/rules").glob("*.smk")), "Snakefile", "repro"]
# example values of the placeholders that advice carries (f-string fields, shell variables)
FIELDS = {"{target}": "llvm", "{dir}": "build/kernels/llvm", "$locks": ".snakemake/locks", "{d}": "data/ptb",
          "{path}": "data/ptb/clusters/brown-128.tsv", "{rel}": "data/ptb/clusters/brown-128.tsv", "{ds}": "ptb",
          "{arch}": "sm_75"}
ADVICE = re.compile(r"(?<![`\w])`((?:snakemake|\./repro|python3? -m)\b[^`]*?)\\?`(?!`)")  # \` in bash
BARE = re.compile(r"(?:snakemake|\./repro \w+) -{1,2}\w")


def _message_text(path: str) -> str:
    """The file's text without comments and triple-quoted strings (docstrings: help text, not advice)."""
    text = re.sub(r'""".*?"""', "", (ROOT / path).read_text(), flags=re.S)
    text = re.sub(r'help="[^"]*"', "", text)  # an option's help names snakemake's options: no advice
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines() if "usage:" not in line)


def advised_commands() -> list[tuple[str, str]]:
    found = []
    for path in CODE:
        # adjacent string literals joined, so that an advice split over two source lines reads whole
        text = re.sub(r'"\s*\n\s*f?"', "", _message_text(path))
        found += [(path, m.group(1).strip()) for m in ADVICE.finditer(text)]
    return list(dict.fromkeys(found))


def test_every_advised_command_is_marked():
    """A command in a message is in backticks (so that the test below finds and runs it)."""
    bare = []
    for path in CODE:
        text = re.sub(r'"\s*\n\s*f?"', "", _message_text(path))
        text = ADVICE.sub("", text)
        bare += [f"{path}: ...{text[max(0, m.start() - 40):m.end() + 40]}..." for m in BARE.finditer(text)]
    assert not bare, "put each advised command in backticks:\n" + "\n".join(bare)


ADVISED = advised_commands()


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("source, command", ADVISED, ids=[f"{s}: {c}" for s, c in ADVISED])
def test_advised_command_works_as_printed(source, command, request, monkeypatch):
    for field, value in FIELDS.items():
        command = command.replace(field, value)
    assert not re.search(r"\{\w+\}", command), f"{source}: give {command!r}'s placeholder an example in FIELDS"
    test_documented_command_works_as_written(source, command, request, monkeypatch)


@pytest.mark.parametrize("given, expected", [
    ("--cores 8 --resources gpu=1 results/table1.csv", "results/table1.csv --cores 8 --resources gpu=1"),
    ("--cores 8 --resources gpu=1 -- results/table1.csv", "results/table1.csv --cores 8 --resources gpu=1"),
    ("--cores 2 --forcerun kernels_llvm build/kernels/llvm/manifest.json",
     "build/kernels/llvm/manifest.json --cores 2 --forcerun kernels_llvm"),
    ("--configfile my.yaml results/runs/ptb/kn5/metrics.json", "results/runs/ptb/kn5/metrics.json --configfile my.yaml"),
    ("--config mirror=../shared/data profile=tiny -n all", "all --config mirror=../shared/data profile=tiny -n"),
    ("-np results/a.csv --set-resources train:mem_mb=1 --until table results/b.csv",
     "results/a.csv results/b.csv -np --set-resources train:mem_mb=1 --until table"),
    ("--profile profiles/tiny --report results/report.html", "--profile profiles/tiny --report results/report.html"),
    ("--rerun-triggers mtime params all", "all --rerun-triggers mtime params"),
    ("--forcerun results/runs/ptb/kn5/metrics.json", "--forcerun results/runs/ptb/kn5/metrics.json"),
    ("--resources gpu results/table1.csv", "results/table1.csv --resources gpu"),  # gpu: a malformed value
])
def test_repro_run_puts_targets_first(given, expected):
    """The project's snakemake's reordering (pipeline.snakemake_args): targets out of many-valued options, rest
    kept."""
    from pipeline.snakemake_args import targets_first
    assert " ".join(targets_first(given.split())) == expected


# ---- the project's snakemake: the headline command as typed, in the activated environment ----------

def activated(words: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``words`` run as a shell with ``source .venv/bin/activate`` would run them (PATH, VIRTUAL_ENV)."""
    env = os.environ | {"PATH": f"{ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}",
                        "VIRTUAL_ENV": str(ROOT / ".venv")}
    return subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("line", [
    "snakemake --cores 8 --resources gpu=1 results/table1.csv -n",
    "snakemake -n --cores 2 --set-resources table:mem_mb=500 --config mirror=../shared/data results/table1.csv",
    "snakemake -n --set-threads table=1 results/table1.csv --forcerun table --cores 1",
])
def test_snakemake_command_works_verbatim_in_the_activated_environment(line):
    """Targets after --resources, --config, --set-resources, ...: the project's snakemake puts them first."""
    proc = activated(line.split())
    assert proc.returncode == 0, f"{line}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    out = proc.stdout + proc.stderr
    assert re.search(r"^rule table:", out, flags=re.M) and "results/table1.csv" in out, out[-3000:]
    assert not re.search(r"^rule (train|bench)", out, flags=re.M), "only table1 and what it needs"


@pytest.mark.parametrize("given, expected", [
    ("a --profile profiles/cpu --configfile x.yaml --config mirror=d -n",
     "a --profile profiles/cpu --configfile x.yaml --config profile=cpu mirror=d -n"),
    ("a --profile=profiles/tiny --config=mirror=d", "a --profile=profiles/tiny --config profile=tiny mirror=d"),
    ("a --profile profiles/cpu --config profile=gpu", "a --profile profiles/cpu --config profile=cpu profile=gpu"),
    ("a --profile profiles/cpu -n", "a --profile profiles/cpu -n"),  # no --config: the profile's own applies
    ("a --config mirror=d", "a --config mirror=d"),
])
def test_a_command_line_config_keeps_the_profiles_entries(given, expected):
    """snakemake replaces a profile's `config:` by a command line's --config; ours puts the profile's first."""
    from pipeline.snakemake_args import keep_profile_config
    assert " ".join(keep_profile_config(given.split())) == expected


def test_the_cpu_profile_stays_the_cpu_profile_under_a_configfile_and_a_config(tmp_path):
    """--configfile replaces the profile's configfiles and --config its config: before the fix the CPU runs
    were planned as GPU runs (gpu=1, slurm partition gpu) on this command line."""
    overlay = tmp_path / "my.yaml"
    overlay.write_text("defaults:\n  vlnhmm: {max_seconds: 60}\n")
    proc = activated(["snakemake", "--profile", "profiles/cpu", "results/runs/ptb/vlnhmm-1024-m8/metrics.json",
                      "--configfile", str(overlay), "--config", "mirror=../shared/data", "-n", "--nolock",
                      "--forcerun", "train"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    train = out[out.index("rule train:"):]
    assert re.search(r"resources: .*gpu=0", train) and "slurm_partition=cpu" in train, train[:2000]
    # ./repro status / import / bundle read the config the same way (pipeline.profiles.load_config)
    from pipeline.profiles import load_config
    config = load_config("profiles/cpu", [str(overlay)], ["mirror=../shared/data"])
    assert config["profile"] == "cpu" and "ptb/vlnhmm-1024-m8" in config["cpu_runs"]


@pytest.mark.parametrize("line, option, word", [
    ("snakemake --cores 8 --resources gpu results/table1.csv -n", "--resources", "gpu"),
    ("snakemake -n --config mirror results/table1.csv", "--config", "mirror"),
    ("snakemake -n --set-resources table:mem_mb results/table1.csv", "--set-resources", "table:mem_mb"),
])
def test_a_malformed_value_stops_with_a_clear_error(line, option, word):
    """A word without `=` that is no target is a malformed value: snakemake's usage, the option named."""
    proc = activated(line.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("usage: snakemake")
    assert f"snakemake: error: argument {option}: '{word}' is not NAME=VALUE" in proc.stderr, proc.stderr[-2000:]


def test_setup_puts_the_entry_point_back_after_a_reinstall_of_snakemake():
    """pip writes its own console script on a reinstall of snakemake; `./repro setup` writes ours again."""
    from pipeline.snakemake_args import ENTRY_POINT

    script = ROOT / ".venv/bin/snakemake"
    ours = ENTRY_POINT.format(python=ROOT / ".venv/bin/python")
    pips = f"#!{ROOT / '.venv/bin/python'}\nimport sys\nfrom snakemake.cli import main\n" \
           "if __name__ == '__main__':\n    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n    sys.exit(main())\n"
    try:
        script.write_text(pips)
        out = run(["./repro", "setup"], {})
        assert script.read_text() == ours and "wrote .venv/bin/snakemake" in out.stdout, out.stdout
        assert "snakemake" not in run(["./repro", "setup"], {}).stdout  # in place: nothing written
    finally:
        if script.read_text() != ours:
            script.write_text(ours)


# -- ./repro set-up: which torch build it installs -------------------------------------------------


@pytest.fixture
def repro_copy(tmp_path):
    """``./repro`` in a scratch clone whose .venv/bin/python only records its calls (and KenLM in place)."""
    for name in ("repro", "requirements.lock", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "repro").chmod(0o755)
    calls = tmp_path / "calls.log"
    fake = tmp_path / ".venv/bin/python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n'
                    # FAKE_PIP_FAIL: the call with these words fails, as pip does for a package it cannot find
                    'if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ "$*" == *"$FAKE_PIP_FAIL"* ]]; then exit 1; fi\n')
    for tool in ("lmplz", "build_binary"):
        exe = tmp_path / ".tools/kenlm/bin" / tool
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    fake.chmod(0o755)
    old = 1_000_000_000
    for name in ("requirements.lock", "pyproject.toml"):
        os.utime(tmp_path / name, (old, old))

    def setup(stamp: str | None, torch_env: str | None, **extra_env: str):
        """Run ``./repro setup`` with this stamp content (None: none) -> (process, pip calls, new stamp)."""
        stamp_file = tmp_path / ".venv/.installed"
        stamp_file.unlink(missing_ok=True)
        if stamp is not None:
            stamp_file.write_text(stamp)
        calls.write_text("")
        env = {k: v for k, v in os.environ.items() if k != "REPRO_TORCH"}
        if torch_env is not None:
            env["REPRO_TORCH"] = torch_env
        env.update(extra_env)
        proc = subprocess.run(["./repro", "setup"], cwd=tmp_path, capture_output=True, text=True, env=env,
                              timeout=60)
        pip = [line for line in calls.read_text().splitlines() if line.startswith("-m pip install")]
        return proc, pip, stamp_file.read_text().strip() if stamp_file.exists() else None

    return setup


@pytest.mark.parametrize("stamp, torch_env, installs, build", [
    (None, None, True, "cpu"),        # a fresh clone: the pinned CPU build
    ("cpu\n", None, False, "cpu"),    # in place
    ("", None, False, ""),            # a stamp from before builds were recorded: taken as the CPU build, kept
    ("cpu\n", "cuda", True, "cuda"),  # asked for the CUDA build: installed, though the stamp is newer
    ("cuda\n", None, False, "cuda"),  # unset keeps the CUDA build a GPU machine installed
    ("cuda\n", "cpu", True, "cpu"),   # and REPRO_TORCH=cpu goes back
])
def test_setup_installs_the_torch_build_asked_for_or_keeps_the_one_installed(repro_copy, stamp, torch_env,
                                                                              installs, build):
    proc, pip, recorded = repro_copy(stamp, torch_env)
    assert proc.returncode == 0, proc.stderr
    assert bool(pip) == installs, pip
    assert recorded == build
    if installs:
        cuda_torch = any(re.search(r"--isolated torch==\S+$", line) for line in pip)
        assert cuda_torch == (build == "cuda"), pip
        assert any("-r requirements.lock" in line for line in pip) == (build == "cpu"), pip
        assert f"torch's {build} build" in proc.stdout


def test_a_failed_package_install_fails_setup_and_stops_the_kenlm_build_beside_it(repro_copy, tmp_path):
    # KenLM missing: its build (here a stand-in that takes 4 s) starts beside the package install
    (tmp_path / ".tools/kenlm/bin/lmplz").unlink()
    build = tmp_path / "workflow/scripts/install_kenlm.sh"
    build.parent.mkdir(parents=True)
    build.write_text(f"sleep 4\nmkdir -p {tmp_path}/.tools/kenlm/bin && touch {tmp_path}/.tools/kenlm/bin/lmplz\n")
    proc, pip, recorded = repro_copy(None, None, FAKE_PIP_FAIL="-r requirements.lock")
    assert proc.returncode == 1 and "pinned packages" in proc.stdout and "FAILED" in proc.stdout, proc.stdout
    assert not any("-e ." in line for line in pip), pip  # the step ended at its first failing command
    assert recorded is None and "KenLM" not in proc.stdout
    time.sleep(5)
    assert not (tmp_path / ".tools/kenlm/bin/lmplz").exists()  # the build beside it was stopped

    proc, pip, recorded = repro_copy(None, None)
    assert proc.returncode == 0 and recorded == "cpu", proc.stdout + proc.stderr
    assert re.search(r"KenLM .* done \([45] s, beside the steps above", proc.stdout), proc.stdout
    assert (tmp_path / ".tools/kenlm/bin/lmplz").exists()


def test_setup_refuses_an_unknown_torch_build(repro_copy):
    proc, pip, recorded = repro_copy("cpu\n", "rocm")
    assert proc.returncode == 2 and "REPRO_TORCH must be cpu or cuda, not 'rocm'" in proc.stderr
    assert pip == [] and recorded == "cpu"


def test_repro_without_a_command_prints_its_usage_and_runs_nothing():
    for words in (["./repro"], ["./repro", "--help"]):
        proc = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "./repro run [snakemake args]" in proc.stdout, proc.stderr
        assert "[setup]" not in proc.stdout  # nothing installed, nothing run
    proc = subprocess.run(["./repro", "runn"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "unknown command 'runn'" in proc.stderr
