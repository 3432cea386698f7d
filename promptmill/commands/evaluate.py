"""``promptmill eval BASELINE CANDIDATE --dataset FILE.jsonl``: side by side, with an HTML
report a reviewer can open, and an exit code that says whether the candidate is no worse
than the baseline (0), is worse by more than the margin (1), or could not run (2)."""

from __future__ import annotations

import argparse
import html
from pathlib import Path

from producers.evaluation import Comparison, Side, evaluate
from producers.prompt_tests import CouldNotRun
from promptmill import app
from promptmill.commands.prompt_tests import (
    EXIT_COULD_NOT_RUN,
    EXIT_FAILED,
    judged_session,
)
from promptmill.settings import Settings
from schemas import PromptmillError
from schemas.prompt_tests import Assertion, TestFile
from schemas.yaml_files import load_yaml, validate_yaml


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="NAME@VERSION or NAME@LABEL, optionally #MODEL")
    parser.add_argument("candidate", help="the same forms: another version, label or model")
    parser.add_argument("--dataset", type=Path, required=True, help="JSONL: vars, expected, assert")
    parser.add_argument(
        "--assert",
        dest="shared",
        type=Path,
        metavar="FILE.tests.yaml",
        help="also check every row with this test file's defaults.assert",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="how far (0..1) the candidate's pass rate may fall below the baseline's",
    )
    parser.add_argument(
        "--similarity", type=float, default=0.8, help="threshold of rows' `expected`"
    )
    parser.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--embedding-model", help="default: PROMPTMILL_EVALS_EMBEDDING_MODEL")


async def evaluate_command(settings: Settings, args: argparse.Namespace) -> None:
    try:
        baseline, candidate = Side.parse(args.baseline), Side.parse(args.candidate)
        shared = _defaults(args.shared) if args.shared is not None else []
    except (CouldNotRun, PromptmillError) as exc:
        print(f"promptmill: could not run the evaluation: {exc}")
        raise SystemExit(EXIT_COULD_NOT_RUN) from None
    async with judged_session(settings, None, args.embedding_model) as (client, judge):
        try:
            comparison = await evaluate(
                app.kafka_connection(settings),
                app.catalog(settings),
                client,
                baseline,
                candidate,
                args.dataset,
                shared,
                judge,
                app.operator(settings),
                similarity=args.similarity,
                margin=args.margin,
                within=args.timeout,
            )
        except (CouldNotRun, PromptmillError) as exc:
            print(f"promptmill: could not run the evaluation: {exc}")
            raise SystemExit(EXIT_COULD_NOT_RUN) from None
    print(side_by_side(comparison))
    if args.html is not None:
        args.html.write_text(html_report(comparison), encoding="utf-8")
    if not comparison.no_worse:
        raise SystemExit(EXIT_FAILED)


def _defaults(path: Path) -> list[Assertion]:
    """A test file's ``defaults.assert`` (every case of it starts with them)."""
    node, data = load_yaml(path, "a test file")
    return list(validate_yaml(path, node, data, TestFile).defaults.assertions)


def _rows(c: Comparison) -> list[tuple[str, str, str]]:
    rate = [
        f"{c.rate(s):.0%} ({sum(x.passed for x in c.runs[s].cases)}/{len(c.runs[s].cases)})"
        for s in (0, 1)
    ]
    rows = [("cases passed", rate[0], rate[1])]
    rows.append(("mean score", f"{c.mean_score(0):.3f}", f"{c.mean_score(1):.3f}"))
    for name, a, b in c.assertion_rates():
        rows.append((f"  {name}", f"{a:.0%}", f"{b:.0%}"))
    totals = [c.totals(0), c.totals(1)]
    rows.append(("tokens", str(totals[0][0]), str(totals[1][0])))
    rows.append(("cost $", f"{totals[0][1]:.6f}", f"{totals[1][1]:.6f}"))
    for label, index in (("latency p50 ms", 2), ("latency p95 ms", 3)):
        shown = [_ms(t[index]) for t in totals]
        rows.append((label, shown[0], shown[1]))
    return rows


def _ms(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, float) else "-"


def side_by_side(c: Comparison) -> str:
    width = max(24, len(str(c.baseline)) + 2, len(str(c.candidate)) + 2)
    lines = [f"{'':<22} {'baseline ' + str(c.baseline):<{width + 9}} candidate {c.candidate}"]
    for name, left, right in _rows(c):
        lines.append(f"{name:<22} {left:<{width + 9}} {right}")
    differing = c.differing()
    lines.append(f"rows where they differ: {len(differing)}")
    for base, cand in differing[:20]:
        loser = base if not base.passed else cand
        reason = next((r for _, ok, r in loser.assertion_rows() if not ok), "")
        lines.append(
            f"  line {base.line}: baseline {'PASS' if base.passed else 'FAIL'}, candidate "
            f"{'PASS' if cand.passed else 'FAIL'} ({reason[:80]})"
        )
    verdict = "no worse than" if c.no_worse else "WORSE than"
    lines.append(
        f"candidate is {verdict} the baseline (pass rate {c.rate(1):.0%} vs {c.rate(0):.0%}, "
        f"margin {c.margin:.0%})"
    )
    return "\n".join(lines)


def html_report(c: Comparison) -> str:
    """One self-contained page: the summary table, then every row's outputs and verdicts."""
    esc = html.escape
    summary = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(a)}</td><td>{esc(b)}</td></tr>"
        for name, a, b in _rows(c)
    )
    rows = []
    for a, b in zip(c.runs[0].cases, c.runs[1].cases, strict=True):
        cells = []
        for case in (a, b):
            text = (
                case.completions[0].text
                if case.completions
                else (
                    f"{case.failures[0].code.value}: {case.failures[0].message}"
                    if case.failures
                    else ""
                )
            )
            checks = "<br>".join(
                f"{'✔' if ok else '✘'} {esc(label)}: {esc(reason)}"
                for label, ok, reason in case.assertion_rows()
            )
            verdict = "pass" if case.passed else "fail"
            cells.append(
                f"<td class='{verdict}'><pre>{esc(text)}</pre><small>{checks}</small></td>"
            )
        differs = " class='differs'" if a.passed != b.passed else ""
        variables = esc(str(a.case.vars))
        rows.append(
            f"<tr{differs}><td>{a.line}<br><small>{variables}</small></td>{''.join(cells)}</tr>"
        )
    verdict = "no worse than" if c.no_worse else "worse than"
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<title>promptmill eval: {esc(str(c.baseline))} vs {esc(str(c.candidate))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }}
pre {{ white-space: pre-wrap; max-width: 40em; margin: 0; }}
.pass {{ background: #eefbee; }} .fail {{ background: #fdeeee; }}
tr.differs td:first-child {{ border-left: 4px solid #e69a00; }}
</style></head><body>
<h1>{esc(str(c.baseline))} vs {esc(str(c.candidate))}</h1>
<p>The candidate is <b>{verdict}</b> the baseline: pass rate {c.rate(1):.0%} against
{c.rate(0):.0%}, margin {c.margin:.0%}; {len(c.differing())} row(s) differ.</p>
<table><tr><th></th><th>baseline {esc(str(c.baseline))}</th>
<th>candidate {esc(str(c.candidate))}</th></tr>
{summary}</table>
<table><tr><th>line</th><th>baseline</th><th>candidate</th></tr>
{"".join(rows)}</table>
</body></html>
"""
