"""Paper text vs released code: the recipe overlay, the released code's initialization, check
points and cluster files (wcluster ``paths``), and the fidelity table."""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import merged_config
from hmm.config import HMMConfig
from hmm.model import NeuralParameterization
from pipeline.data.clusters import AUTHORS_SHA256, load_clusters, main as clusters_main, read_paths
from pipeline.config import ConfigError, recipe_overrides, resolve_runs
from pipeline.data.corpus import Corpus
from pipeline.reporting.fidelity import spec, table
from pipeline.training.train import Trainer

ROOT = Path(__file__).resolve().parent.parent

# (init, eos_reset, clusters, plateau, patience, check_points, test_weights) under each recipe
PAPER_TEXT = ("kaiming", "train-in-window", "brown-clustering", "min-valid-nll", 8, "even", "best")
RELEASED_CODE = ("torch-default", "train-in-window", "authors", "max-valid-loglik", 4, "thirds-and-end", "last")


def recipe_items(run) -> tuple:
    """The settings on which the two recipes differ, in the order of PAPER_TEXT."""
    s, t = run.settings, run.train
    return (s.init, s.eos_reset, s.clusters, t.plateau, t.patience, t.check_points, t.test_weights)


def test_released_recipe_sets_every_difference_in_its_own_folders():
    config = merged_config("config/config.yaml")
    paper = {r.key: r for r in resolve_runs(config)}
    released = {r.key: r for r in resolve_runs(config | {"recipe": "released-code"})}
    run, other = paper["ptb/vlnhmm-32768"], released["ptb/vlnhmm-32768"]
    assert recipe_items(run) == PAPER_TEXT
    assert recipe_items(other) == RELEASED_CODE
    assert run.out_dir == "results/runs/ptb/vlnhmm-32768"
    assert other.out_dir == "results/released-code/runs/ptb/vlnhmm-32768"
    assert other.checkpoint.startswith("build/checkpoints/released-code/")
    assert other.inputs()["clusters"] == "data/ptb/clusters/authors-128.tsv"
    assert released["ptb/lstm"].train.patience == 4 and released["ptb/kn5"].out_dir.startswith("results/released-code/")
    # a run's own setting stays over the recipe's
    own = resolve_runs(config | {"recipe": "released-code", "runs": [
        {"name": "x", "dataset": "ptb", "model": "vlnhmm", "init": "kaiming"}]})[0]
    assert own.settings.init == "kaiming" and own.train.test_weights == "last"


def test_wikitext2_vlnhmm_under_both_recipes_has_each_recipes_settings():
    """wt2/vlnhmm-32768: the paper's text (lr 1e-3, our Brown clusters) and the released run_w2 command (lr 0.01,
    the authors' clusters/w2flm-128/paths), every other recipe item as on PTB."""
    from pipeline.authors import authors_source

    config = merged_config("config/config.yaml")
    paper = {r.key: r for r in resolve_runs(config)}["wt2/vlnhmm-32768"]
    released = {r.key: r for r in resolve_runs(config | {"recipe": "released-code"})}["wt2/vlnhmm-32768"]
    assert paper.train.lr == 1e-3 and released.train.lr == 0.01
    assert paper.inputs()["clusters"] == "data/wt2/clusters/brown-128.tsv"
    assert released.inputs()["clusters"] == "data/wt2/clusters/authors-128.tsv"
    url, sha = authors_source("wt2", released.settings.num_clusters)
    assert url.endswith("/clusters/w2flm-128/paths")
    assert sha == "315f41820a648d6647f44a76616b0f25d660fe87a178ebf05c9876adeac1b865"
    assert recipe_items(paper) == PAPER_TEXT
    assert recipe_items(released) == RELEASED_CODE
    # the dataset's recipe setting is the VLNHMM's on WikiText-2 only
    runs = {r.key: r for r in resolve_runs(config | {"recipe": "released-code"})}
    assert runs["ptb/vlnhmm-32768"].train.lr == 0.01 and runs["wt2/lstm"].train.lr == 1e-3
    assert {r.key: r for r in resolve_runs(config)}["wt2/lstm"].train.lr == 1e-3


def test_authors_clusters_of_another_m_on_wikitext2_stop_naming_the_run():
    config = merged_config("config/config.yaml") | {"recipe": "released-code"}
    runs = [{"name": "x", "dataset": "wt2", "model": "vlnhmm", "num_states": 1024, "num_clusters": 256}]
    with pytest.raises(ConfigError, match=r"run wt2/x \(clusters: authors\): the authors' repository has no paths file "
                                          r"for wt2 with 256 clusters: the released code reads clusters/w2flm-M/paths "
                                          r"for wt2, pinned for M = 32, 64, 128"):
        resolve_runs(config | {"runs": runs})


def test_a_runs_own_setting_over_its_recipe_is_said():
    config = merged_config("config/config.yaml") | {"recipe": "released-code"}
    assert recipe_overrides(config) == []
    config["runs"] = [*config["runs"], {"name": "y", "dataset": "wt2", "model": "vlnhmm", "lr": 1e-3},
                      {"name": "z", "dataset": "ptb", "model": "vlnhmm", "init": "kaiming"}]
    assert recipe_overrides(config) == ["run wt2/y: its own lr: 0.001 is used, not recipe released-code's 0.01",
                                        "run ptb/z: its own init: 'kaiming' is used, not recipe released-code's "
                                        "'torch-default'"]
    runs = {r.key: r for r in resolve_runs(config)}
    assert runs["wt2/y"].train.lr == 1e-3 and runs["ptb/z"].settings.init == "kaiming"


@pytest.mark.parametrize("init", ["kaiming", "torch-default"])
def test_initialization_statistics(init):
    torch.manual_seed(0)
    cfg = HMMConfig(num_states=1024, num_clusters=8, hidden=256, init=init)
    p = NeuralParameterization(cfg, 10000, 8)
    emb, word, bias = p.state_emb.detach(), p.word_emb.detach(), p.word_bias.detach()
    if init == "torch-default":  # nn.Embedding: N(0, 1); nn.Linear(256, V): U(+-1/16) for weight and bias
        assert abs(emb.mean()) < 0.01 and abs(emb.std() - 1) < 0.01
        assert abs(emb.pow(3).mean()) < 0.02 and abs(emb.pow(4).mean() - 3) < 0.05   # normal, not uniform
        assert word.abs().max() <= 1 / 16 and abs(word.std() - 1 / 16 / math.sqrt(3)) < 1e-3
        assert bias.abs().max() <= 1 / 16 and bias.std() > 0.03
    else:  # Kaiming uniform (fan_in 256): U(+-sqrt(6 / 256)); word bias 0
        bound = math.sqrt(6 / 256)
        assert emb.abs().max() <= bound and abs(emb.std() - bound / math.sqrt(3)) < 1e-3
        assert (bias == 0).all()
    lin = p.trans_mlp.lin1.weight.detach()  # torch-default: nn.Linear's own U(+-1/sqrt(fan_in)); kaiming: as all
    assert abs(lin.abs().max() - (1 / 16 if init == "torch-default" else math.sqrt(6 / 256))) < 2e-3


def test_released_check_points():
    """thirds-and-end: PTB's 1,816 steps, 4 checks: after 605, 1210, 1815 and 1816 steps, each epoch."""
    t = SimpleNamespace(cfg=SimpleNamespace(check_points="thirds-and-end"), steps_per_epoch=1816, check_every=605)
    assert [s for s in range(1, 2 * 1816 + 1) if Trainer.checks_at(t, s)] == \
        [605, 1210, 1815, 1816, 1816 + 605, 1816 + 1210, 1816 + 1815, 2 * 1816]
    t = SimpleNamespace(cfg=SimpleNamespace(check_points="thirds-and-end"), steps_per_epoch=9, check_every=3)
    assert Trainer.checks_at(t, 9) == 2  # the released code evaluates twice: the lr schedule steps twice
    t = SimpleNamespace(cfg=SimpleNamespace(check_points="even"), steps_per_epoch=1816, check_every=454)
    assert [s for s in range(1, 1817) if Trainer.checks_at(t, s)] == [454, 908, 1362, 1816]


def write_paths(path, vocab, cluster, leave_out=()):
    """A wcluster paths file (bits TAB word TAB count, sorted by bits) of a word -> cluster map."""
    width = max(1, int(cluster.max()).bit_length())
    rows = sorted((format(int(c), f"0{width}b"), w, n) for w, c, n in zip(vocab.tokens, cluster, vocab.counts)
                  if w not in leave_out)
    path.write_text("".join(f"{b}\t{w}\t{n}\n" for b, w, n in rows))


def test_paths_file_round_trips_into_the_same_blocks(small_ptb, tmp_path):
    vocab = Corpus.load(small_ptb).vocab
    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 5, len(vocab))
    eos = vocab.index["<eos>"]
    cluster[eos] = 4                                  # as in the authors' PTB file: <eos> is not listed
    paths = tmp_path / "paths"
    write_paths(paths, vocab, cluster, leave_out={"<eos>"})
    with open(paths, "a") as f:
        f.write("100\t<pad>\t0\n")                    # a word we do not have: it never enters the vocabulary
    got, bits, unknown = read_paths(paths, vocab)
    assert np.array_equal(got, cluster) and unknown == ["<pad>"]
    out = tmp_path / "c.tsv"
    clusters_main(["--data", str(small_ptb), "--num-clusters", "5", "--paths", str(paths), "--out", str(out),
                   "--summary", str(tmp_path / "c.md")])
    assert np.array_equal(load_clusters(out, vocab), cluster) and "<pad>" not in out.read_text()
    assert "put in the last cluster: 1 (<eos>)" in (tmp_path / "c.md").read_text()


def test_wrong_hash_missing_and_truncated_cluster_files(small_ptb, tmp_path):
    paths = tmp_path / "paths"
    paths.write_text("0\tthe\t10\n1\ta\t5\n")
    args = ["--data", str(small_ptb), "--num-clusters", "8", "--authors", "ptb", "--out", str(tmp_path / "c.tsv")]
    with pytest.raises(SystemExit) as err:
        clusters_main(["--paths", str(paths), *args])
    message = str(err.value)
    assert str(paths) in message and AUTHORS_SHA256["ptb"][8] in message and "is not the authors'" in message
    print(message)
    with pytest.raises(SystemExit, match=f"{tmp_path / 'absent'} does not exist; expected .* sha256 "
                                         f"{AUTHORS_SHA256['ptb'][8]}"):
        clusters_main(["--paths", str(tmp_path / "absent"), *args])
    paths.write_text("0\tthe\t10\n1\ta")  # cut mid-line
    with pytest.raises(SystemExit, match=f"{paths}, line 2: not 'bits TAB word TAB count'"):
        clusters_main(["--paths", str(paths), "--data", str(small_ptb), "--num-clusters", "2",
                       "--out", str(tmp_path / "c.tsv"), "--summary", str(tmp_path / "c.md")])


def test_fidelity_table_compares_each_switch_with_the_default_recipe():
    config = merged_config("config/config.yaml")
    s = spec(config)
    assert [r["switch"] for r in s["rows"]] == ["released recipe (all)", "init", "lr-decay", "test-weights",
                                                "clusters", "eos-reset-off"]
    init = s["rows"][1]
    assert init["settings"] == ["init"] and init["switched"] == {"init": "torch-default"}
    # 300, 301, 302, each with a bootstrap interval 5 below and 6 above; 200, 210 without one (one missing)
    valid = {k: (300.0 + i, [295.0 + i, 306.0 + i]) for i, k in enumerate(init["default_runs"])}
    valid |= {k: (200.0 + 10 * i, None) for i, k in enumerate(init["switched_runs"][:2])}
    row = table(s, valid).iloc[1]
    assert (row["default_ppl_mean"], row["default_n"], row["switched_ppl_mean"], row["switched_n"]) == (301, 3, 205, 2)
    assert row["difference"] == -96 and row["exceeds_seed_spread"] == "yes"
    assert row["default_ppl_std"] == 1.0 and row["switched_ppl_std"] == round(math.sqrt(50), 2)
    # the tables' interval: the mean bootstrap half-widths widened by 1.96 sd of the seeds
    assert row["default_ppl_lo"] == round(301 - math.hypot(5, 1.959964), 2)
    assert row["default_ppl_hi"] == round(301 + math.hypot(6, 1.959964), 2)
    assert math.isnan(row["switched_ppl_lo"]) and math.isnan(row["switched_ppl_hi"])


def test_fidelity_table_names_a_cluster_file_by_what_it_is_not_where_it_sat(tmp_path):
    """A local copy of the authors' file: their file and its pinned sha256; a user's paths file: name and
    sha256.  Neither cell names the folder the file sat in."""
    import hashlib

    config = merged_config("config/config.yaml")
    config["recipes"]["released-code"]["cluster_paths"] = str(tmp_path / "authors-lm-8-paths")
    cells = table(spec(config), {}).set_index("switch")
    assert cells.loc["clusters", "default_value"] == "cluster_paths=None; clusters=brown-clustering"
    assert cells.loc["clusters", "switched_value"] == \
        f"cluster_paths=authors' lm-8 paths (sha256 {AUTHORS_SHA256['ptb'][8]}); clusters=authors"
    tiny = table(spec(merged_config("config/config.yaml", "config/tiny.yaml")), {}).set_index("switch")
    paths = ROOT / ".test/data/ptb/paths-4"
    assert tiny.loc["clusters", "switched_value"] == \
        f"cluster_paths=paths-4 (sha256 {hashlib.sha256(paths.read_bytes()).hexdigest()}); clusters=paths-file"
    for frame in (cells, tiny):
        text = frame.to_csv()
        assert str(tmp_path) not in text and str(ROOT) not in text and ".test/data" not in text


def test_front_page_has_the_paper_text_vs_released_code_table(tmp_path):
    import html
    import re

    from docutils.core import publish_parts

    from pipeline.reporting.frontpage import render
    from test_frontpage import PAPER, SYNTHETIC

    s = spec(merged_config("config/config.yaml"))
    valid = {k: (300.0 + i, None) for i, k in enumerate(s["rows"][1]["default_runs"])}
    valid |= {k: (200.0 + 10 * i, None) for i, k in enumerate(s["rows"][1]["switched_runs"])}
    fidelity = table(s, valid)
    for measured in (None, fidelity):
        page = render({"table2": SYNTHETIC}, PAPER, "full", None, commit="abc", machine="box", now="now",
                      fidelity=measured)
        links = "\n".join(f".. _{t}: #" for t in ("Tables", "Figures", "Training curves", "table2.png", "table2.html"))
        body = publish_parts(page + "\n" + links, writer="html",
                             settings_overrides={"report_level": 2, "halt_level": 2})["html_body"]
        text = html.unescape(re.sub(r"<[^>]+>", "", body))
        assert "Paper text vs released code" in text and "Kaiming uniform for all weights" in text
        assert "eos_reset: train-in-window" in text and "the last weights" in text
        if measured is None:
            assert "not measured (results/fidelity.csv)" in text
        else:
            assert "-91.0 valid ppl (301.0 to 210.0" in text.replace("\u2212", "-") and "exceeds the seed spread" in text


def test_fetch_authors_keeps_only_a_file_with_the_pinned_hash(tmp_path, monkeypatch):
    """The download path, on a local file:// URL (no network in tests): kept only if its sha256 is the pin."""
    import hashlib

    import pipeline.authors as authors
    import pipeline.data.clusters as clusters

    source = tmp_path / f"{authors.AUTHORS_COMMIT}/clusters/lm-8/paths"
    source.parent.mkdir(parents=True)
    source.write_text("0\tthe\t10\n1\ta\t5\n")
    monkeypatch.setattr(authors, "AUTHORS_URL", f"file://{tmp_path}/{{commit}}/clusters/{{name}}/paths")
    out = tmp_path / "data/authors-8.paths"
    with pytest.raises(clusters.ClusterFileError, match=f"expected {AUTHORS_SHA256['ptb'][8]}"):
        clusters.fetch_authors("ptb", 8, out)
    assert not out.exists() and not list(out.parent.iterdir())  # nothing half-trusted is left
    monkeypatch.setitem(clusters.AUTHORS_SHA256["ptb"], 8, hashlib.sha256(source.read_bytes()).hexdigest())
    clusters.fetch_authors("ptb", 8, out)
    assert out.read_bytes() == source.read_bytes()
    with pytest.raises(clusters.ClusterFileError, match="no paths file for wt2 with 8 clusters"):
        clusters.fetch_authors("wt2", 8, out)


def test_each_recipes_run_is_filed_and_shown_apart(tmp_path):
    """`./repro import --local` under `recipe=released-code` files the run of that recipe (results/released-code/
    runs/...) under reference/released-code/, beside the paper-text run of the same name, and each recipe's
    tables read their own."""
    import json

    from pipeline.integrity import record_dir
    from pipeline.node.importer import file_local
    from pipeline.reporting.runs import load_runs

    config = merged_config("config/config.yaml")
    released_config = config | {"recipe": "released-code"}
    runs = {"paper": {r.key: r for r in resolve_runs(config)}["ptb/lstm"],
            "released": {r.key: r for r in resolve_runs(released_config)}["ptb/lstm"]}
    assert runs["paper"].result_spec() != runs["released"].result_spec()  # patience, check points, test weights
    for which, valid in (("paper", 100.0), ("released", 120.0)):
        d = tmp_path / runs[which].out_dir
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"status": "measured", "spec": runs[which].result_spec(),
                                                    "valid_ppl": valid, "device_name": "test CPU"}))
        record_dir(d, ["metrics.json"])
    ref = tmp_path / "reference"
    assert file_local(["ptb/lstm"], config, ref, work=tmp_path)["imported"] == ["ptb/lstm"]
    assert file_local(["ptb/lstm"], released_config, ref, work=tmp_path)["imported"] == ["ptb/lstm"]
    filed = {p.relative_to(ref).parent.as_posix() for p in ref.rglob("metrics.json")}
    assert filed == {"ptb/lstm", "released-code/ptb/lstm"}
    for which, valid in (("paper", 100.0), ("released", 120.0)):
        [row] = load_runs([runs[which].to_dict()], tmp_path / "no-local-runs", ref)
        assert row["metrics"]["valid_ppl"] == valid and row["status"].startswith("reference: measured"), row["status"]
