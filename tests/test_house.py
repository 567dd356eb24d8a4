"""The house rules: packages import only downward, every setting has one home, the workflow is
lint- and format-clean, the generated settings reference is current, and no committed result names
a path of the machine that made it."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, resolve_run, settings_doc

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hmm", "baselines", "pipeline", "bench")
# who may import whom: the model at the bottom, the reproduction's machinery above it, benchmarks on top
ALLOWED = {"hmm": set(), "baselines": set(), "pipeline": {"hmm", "baselines"}, "bench": {"hmm", "pipeline"}}


def imports_of(package: str) -> dict[str, set[str]]:
    """module path -> the repository packages it imports (any import statement, at any depth)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(PACKAGES) - {package}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_only_run_downward(package):
    bad = {mod: sorted(deps - ALLOWED[package]) for mod, deps in imports_of(package).items() if deps - ALLOWED[package]}
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_an_installed_copy_holds_every_package():
    """pyproject's package list finds every folder with an __init__.py (a wheel, not only `pip -e`)."""
    import tomllib

    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    listed = set(find_packages(str(ROOT), include=find["include"]))
    inits = [p for top in PACKAGES for p in (ROOT / top).rglob("__init__.py")]
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in inits}
    assert listed == on_disk, f"missing from the install: {sorted(on_disk - listed)}, extra: {sorted(listed - on_disk)}"


def module_graph() -> dict[str, set[str]]:
    """module -> the repository modules it imports (any import statement, at any depth)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(f"{d}.")}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    """No cycle among the modules (e.g. hmm.normalizer and hmm.fused_normalizer: one way only)."""
    graph, cycles = module_graph(), []

    def visit(node, path):
        for dep in graph[node]:
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, cycles


# pipeline/: one folder per stage, each importing only the stages before it (and the shared modules at
# pipeline/'s top, which import no stage).  The GPU node reads data and builds models; nothing reads it.
STAGES = {"data": set(), "training": {"data"}, "reporting": {"training"}, "node": {"data", "training"}}


def stage_of(module: str) -> str:
    """``pipeline.training.train`` -> ``training``; a module at pipeline/'s top -> ``shared``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "shared"


def test_pipeline_stages_import_only_earlier_stages():
    folders = sorted(p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(STAGES), "a new folder under pipeline/ needs its place in STAGES"
    bad = []
    for module, deps in module_graph().items():
        if not module.startswith("pipeline.") or module == "pipeline":
            continue
        mine = stage_of(module)
        allowed = {mine, "shared"} | STAGES.get(mine, set())
        bad += [f"{module} -> {d}" for d in sorted(deps)
                if d.startswith("pipeline.") and stage_of(d) not in allowed]
    assert not bad, bad


def test_the_layout_page_names_every_module_config_and_profile():
    """docs/layout.md is where a newcomer looks a file up: every module, config file, rule file and
    profile is named there (by its name without the suffix)."""
    layout = (ROOT / "docs/layout.md").read_text()
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"]
    files += [*(ROOT / "config").glob("*.yaml"), *(ROOT / "workflow/rules").glob("*.smk"),
              *(p for p in (ROOT / "profiles").iterdir() if p.is_dir())]
    missing = [str(p.relative_to(ROOT)) for p in files if not re.search(rf"\b{re.escape(p.stem)}\b", layout)]
    assert not missing, f"name these in docs/layout.md: {missing}"


def test_settings_are_declared_in_the_dataclasses_only():
    """The schema checks the config's structure; no run setting is declared (or defaulted) there or in
    config.yaml's defaults."""
    schema = (ROOT / "config/schema.yaml").read_text()
    for name in ("num_states", "num_clusters", "backend", "state_dropout", "lr", "hidden", "batch_size"):
        assert f" {name}:" not in schema, name
    assert "defaults: {}" in (ROOT / "config/config.yaml").read_text()


def test_a_bad_setting_is_named_with_its_run():
    with pytest.raises(ConfigError, match=r"run ptb/x: `hidden` must be an integer >= 1, got 'big'"):
        resolve_run({"name": "x", "dataset": "ptb", "model": "vlnhmm", "hidden": "big"})
    with pytest.raises(ConfigError, match=r"run ptb/x: `hiden` is not a setting of model ff"):
        resolve_run({"name": "x", "dataset": "ptb", "model": "ff", "hiden": 3})
    with pytest.raises(ConfigError, match=r"`backend` must be one of torch, tvm, matmul, got 'cuda'"):
        resolve_run({"name": "x", "dataset": "ptb", "model": "vlnhmm", "backend": "cuda"})
    with pytest.raises(ConfigError, match="num_states 100 is not a multiple of num_clusters 128"):
        resolve_run({"name": "x", "dataset": "ptb", "model": "vlnhmm", "num_states": 100})


def test_settings_reference_is_current():
    assert (ROOT / "config/README.md").read_text() == settings_doc(), \
        "regenerate: python -m pipeline.config --doc > config/README.md"


@pytest.mark.parametrize("profile", [None, "profiles/tiny"])
def test_snakemake_lint_is_clean(profile):
    cmd = [sys.executable, "-m", "snakemake", "--lint"] + (["--profile", profile] if profile else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-3000:]


def test_snakefmt_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# an absolute path: POSIX (/work/..., /home/..., /tmp/...: a directory at a word's start, not a URL's or
# a relative path's), Windows (C:\\... or C:/...), home (~/...), file:///
ABSOLUTE = re.compile(r"file:/{3}|(?<![\w.~/:\\-])/[\w.-]+/|\b[A-Za-z]:[\\/][\w.-]|(?<![\w./-])~/[\w.-]")


def committed_text(path: Path) -> str:
    """What a person or a program reads in a committed file: its text; a PNG's text chunks; else the
    printable runs of its bytes (as `strings` shows them)."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        from PIL import Image

        with Image.open(path) as image:
            return "\n".join(f"{k}: {v}" for k, v in image.text.items())
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "\n".join(run.decode() for run in re.findall(rb"[\x20-\x7e]{8,}", data))


@pytest.mark.parametrize("text, absolute", [
    ("cluster_paths=/work/fid-keep/authors-lm-8-paths", True), ("out: /tmp/x.csv", True),
    ("C:\\Users\\me\\paths", True), ("~/data/ptb", True), ("file:///home/a", True),
    ("results/runs/ptb/kn5/metrics.json", False), ("https://raw.githubusercontent.com/x/y", False),
    ("1/3, 2n/3 of the epoch", False), ("authors' lm-8 paths (sha256 818c)", False),
])
def test_absolute_path_pattern(text, absolute):
    assert bool(ABSOLUTE.search(text)) == absolute


def test_no_committed_result_names_a_local_path():
    """A committed result names an input by what it is (name, sha256), never where it sat on a machine."""
    files = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert "results/fidelity.csv" in files
    found = [f"{f}: ...{t[max(0, m.start() - 40):m.end() + 40]}..." for f in files
             for t in [committed_text(ROOT / f)] for m in ABSOLUTE.finditer(t)]
    assert not found, "absolute paths in committed results:\n" + "\n".join(found)
