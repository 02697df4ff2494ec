"""Render the figures of a run's report as PNG files for the README (needs ``kaleido``).

    pip install "kaleido>=1"          # and a Chrome or Chromium (apt-get install chromium)
    BROWSER_PATH=/usr/bin/chromium python docs/report_pictures.py runs/quickstart docs/

The report itself (``exitnas report`` / ``exitnas run``) is interactive HTML; this draws the
same figures (:mod:`exitnas.reports.figures`) as static pictures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna

from exitnas.reports.figures import exit_distribution_figure, pareto_figure, tradeoff_figure
from exitnas.reports.info import build_report_info
from exitnas.exits.rules import ExitRule
from exitnas.search.objective import load_evaluator
from exitnas.runs import load_searched, open_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, study, url = open_run(args.run)
    splits, optuna_study = load_searched(study, args.run, url)
    evaluator = load_evaluator(study, args.run, url, splits)
    answer_path = args.run / "deploy" / "answer.json"
    index, rule = None, None
    if answer_path.is_file():  # the point and rule `exitnas run` deployed
        answer = json.loads(answer_path.read_text())
        index, rule = answer["pareto_index"], ExitRule.from_dict(answer["rule"])
    info = build_report_info(optuna_study, study, evaluator, index, rule)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, figure in (
        ("pareto", pareto_figure(info.pareto)),
        ("exits", exit_distribution_figure(info.exits)),
        ("tradeoff", tradeoff_figure(info.tradeoff)),
    ):
        path = args.out / f"{study.name}-{name}.png"
        figure.write_image(path, width=720, height=420, scale=1)
        print(path)


if __name__ == "__main__":
    main()
