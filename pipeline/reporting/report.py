"""The paper's tables and figures from run results: CSV, PNG and a sortable HTML table, ours beside the paper's.

Every paper row (config/paper.yaml) appears, in paper order, whether or not a run filled it;
nothing is invented: a row without metrics has empty measured values and says why (``status``).
A run fills the rows named in its spec's ``rows`` (``tableN/<key>``; table 1 also matches the
run's dataset); ``fig3`` / ``fig4`` make it a point of that figure.  Metrics come from the run's
``metrics.json``; failing that from a reference directory of runs done elsewhere (status
``reference: ...`` with their provenance); failing that the row is ``not run``.  A result whose
recorded spec differs from the config's is never shown: the row says ``stale: ...`` and what differs.

Each row says what was trained beside what the paper trained: our |Z|, M, epochs, steps and seed
next to the paper's setting (the run of the full config, ``--paper-config``, that fills the same
row: its defaults are the paper's values), a model label naming our run, the difference to the
paper absolute and in %, the commit and date of the result and the profile.  Figures plot a
scaled profile's runs at the paper-equivalent x (``--scale``: our |Z| x 32 for the tiny profile),
with our own x on a second axis.

    python -m pipeline.reporting.report table --name table1 --paper config/paper.yaml --runs '[{"name": "kn5", ...}]' \
        [--paper-config config/config.yaml] [--runs-dir results/runs] [--reference results/reference] \
        [--not-run '{"ptb/vlnhmm-32768": "..."}'] [--profile tiny] [--label "..."] \
        [--scale '{"num_states": 32}'] --csv results/table1.csv --png results/table1.png [--html results/table1.html]
    python -m pipeline.reporting.report figure --name fig3 ... (same options)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pipeline.reporting.frames import COLUMNS, build_figure, build_table
from pipeline.reporting.html_table import render_html
from pipeline.reporting.render import render_figure, render_table
from pipeline.reporting.runs import load_runs, paper_runs
from pipeline.reporting.text import FIGURE_NOTE, INTERVAL_NOTE, provenance_line, table_foot, title_lines, uniform_note

# ---------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.reporting.report", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["table", "figure"])
    p.add_argument("--name", required=True)
    p.add_argument("--paper", required=True)
    p.add_argument("--paper-config", help="the full configuration (config/config.yaml): the paper's settings per row")
    p.add_argument("--runs", type=json.loads, default=[], help="JSON list of the runs' specs (Run.to_dict)")
    p.add_argument("--runs-dir", default="results/runs", help="where each run's metrics.json is")
    p.add_argument("--reference")
    p.add_argument("--not-run", default="{}", help="JSON mapping run key (dataset/name) -> reason")
    p.add_argument("--profile", help="the profile's name (the CSV's profile column; default: full)")
    p.add_argument("--label", help="the profile's label, printed on the table or figure")
    p.add_argument("--scale", type=json.loads, default={}, help='JSON: how the profile scales the paper\'s sizes, '
                   'e.g. {"num_states": 32, "num_clusters": 8}')
    p.add_argument("--data-stats", nargs="*", default=[], help="the datasets' stats.json (data/<dataset>/): their "
                   "vocabulary size, a uniform model's perplexity, is printed for scale")
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--html", help="the CSV as a sortable, self-contained HTML table")
    a = p.parse_args(argv)
    paper = yaml.safe_load(Path(a.paper).read_text())
    if a.name not in paper or (a.kind == "table") != (a.name in COLUMNS):
        p.error(f"no {a.kind} {a.name!r} in {a.paper}")
    runs = load_runs(a.runs, a.runs_dir, a.reference, json.loads(a.not_run))
    caption, scale_note = paper[a.name]["caption"], uniform_note(a.data_stats)
    if a.kind == "table":
        df = build_table(a.name, paper, runs, paper_runs(a.paper_config), a.profile)
        title, foot = title_lines(caption, df, a.label), table_foot(a.name, paper, df, "html") + scale_note
        render_table(a.name, df, title, table_foot(a.name, paper, df) + scale_note, a.png)
    else:
        df = build_figure(a.name, paper, runs, a.scale, a.profile)
        title = title_lines(caption, df, a.label)
        foot = [FIGURE_NOTE, "x: where the point is plotted (paper-equivalent: our run_x \u00d7 the profile's scale); "
                "run_x: our own setting.", INTERVAL_NOTE, provenance_line(df[df.series.str.startswith("ours")]),
                *scale_note]
        render_figure(df, a.name, paper, title, a.scale, a.png, scale_note)
    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.csv, index=False)
    if a.html:
        render_html(df, title, foot, Path(a.csv).read_text(), Path(a.csv).name, a.html)


if __name__ == "__main__":
    main()
