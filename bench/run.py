"""Run the benchmark suite of issue 6 and write ``bench/RESULTS.md`` and ``bench/plots/``.

usage (repo root): ``make bench`` or
``.venv/bin/python -m bench.run [--rounds 3] [--only announce,push,...] [--quick]``;
the figures are also saved as ``RESULTS.json`` beside ``RESULTS.md`` (``--replot`` redraws
the plots from it).

Each section measures the product next to its ceiling on the same machine, in
this one run, ``--rounds`` times; the report gives medians, spreads (min-max)
and ratios against the goals. ``--quick`` shrinks the loads for a smoke run
(figures from it are not comparable and RESULTS.md says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.common import BenchContext, Result, fmt, machine_line, spread

#: section name -> module; the order of the report
SECTIONS = {
    "announce": "bench.announce",
    "push": "bench.push_fanout",
    "downloads": "bench.downloads",
    "embedded": "bench.embedded",
    "footprint": "bench.footprint",
}
BENCH_DIR = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="small loads, for a smoke run")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--plots", type=Path, default=BENCH_DIR / "plots")
    parser.add_argument(
        "--replot", action="store_true",
        help="only redraw the plots from the JSON the last run saved beside --out",
    )
    args = parser.parse_args()
    saved = args.out.with_suffix(".json")
    if args.replot:
        plot([Result(**item) for item in json.loads(saved.read_text())], args.plots)
        print(f"redrew {args.plots}/ from {saved}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")

    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {list(SECTIONS)}")
    ctx = BenchContext.create(rounds=args.rounds, quick=args.quick)
    print(f"bench: {machine_line()}; work folder {ctx.workdir}", flush=True)
    results: list[Result] = []
    failures: dict[str, str] = {}
    started = time.monotonic()
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(SECTIONS[name])
            section_results = module.run(ctx)
        except Exception:
            failures[name] = traceback.format_exc()
            print(failures[name], flush=True)
            continue
        for result in section_results:
            print(one_line(result), flush=True)
        results.extend(section_results)
        print(f"({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    report = render(results, failures, ctx, elapsed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    saved.write_text(json.dumps([saveable(r) for r in results], indent=1) + "\n")
    plot(results, args.plots)
    print(f"\nwrote {args.out} and {args.plots}/ in {elapsed:.0f} s", flush=True)
    return 1 if failures else 0


def saveable(r: Result, points: int = 1001) -> dict[str, object]:
    """The result as JSON-ready data, each sample series cut to ``points`` quantiles (a
    latency series has ~100,000 values; its CDF plot needs no more than this)."""
    data = dataclasses.asdict(r)
    for label, values in r.samples.items():
        items = sorted(values)
        if len(items) > points:
            items = [items[round(i * (len(items) - 1) / (points - 1))] for i in range(points)]
        data["samples"][label] = items
    return data


def one_line(r: Result) -> str:
    ratio = f" ratio {r.ratio:.2f}" if r.ratio is not None else ""
    ceiling = f" ceiling {spread(r.ceiling)}" if r.ceiling else ""
    verdict = {True: " MET", False: " MISSED", None: ""}[r.met]
    return f"  {r.name}: {spread(r.product)} {r.unit}{ceiling}{ratio}{verdict}"


def render(results: list[Result], failures: dict[str, str], ctx: BenchContext, elapsed: float) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        f"Measured {now} on {machine_line()}.",
        f"Command: `make bench` (= `.venv/bin/python -m bench.run --rounds {ctx.rounds}`), "
        f"{ctx.rounds} rounds, {elapsed / 60:.0f} min.",
        "",
        "Each cell is the **median of the rounds (min-max)**. *Ceiling* is the same load "
        "against a plain tool on the same machine in the same run (see bench/README.md); "
        "*ratio* = product median / ceiling median.",
        "",
    ]
    if ctx.quick:
        lines += ["**Quick run (`--quick`): reduced loads; not comparable with the goals.**", ""]
    lines += [
        "| section | figure | product | ceiling | ratio | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        ceiling = f"{spread(r.ceiling)} {r.unit}" if r.ceiling else "-"
        lines.append(
            f"| {r.section} | {r.name} | {spread(r.product)} {r.unit} | {ceiling} | {ratio} | "
            f"{r.goal or '-'} | {met} |"
        )
    cpu_rows = [(r, label, values) for r in results for label, values in r.cpu.items()]
    if cpu_rows:
        lines += [
            "",
            "## CPU of each process (% of one core, median of rounds)",
            "",
            "| section | figure | process | CPU |",
            "|---|---|---|---|",
        ]
        for r, label, values in cpu_rows:
            lines.append(f"| {r.section} | {r.name} | {label} | {spread(values)} % |")
    notes = [(r.name, r.notes) for r in results if r.notes]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{name}**: {note}" for name, note in notes]
    if failures:
        lines += ["", "## Sections that failed", ""]
        for name, text in failures.items():
            lines += [f"### {name}", "", "```", text.rstrip(), "```", ""]
    lines += ["", "Plots: `bench/plots/` (throughput ratios, latency distributions).", ""]
    return "\n".join(lines)


def plot(results: list[Result], folder: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'); no plots", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # names follow the figures; drop a previous run's
        old.unlink()
    # Throughput-like figures (higher is better); latencies and times get their own plots.
    ratios = [r for r in results if r.ratio is not None and r.higher_is_better]
    if ratios:
        fig, ax = plt.subplots(figsize=(12, 0.45 * len(ratios) + 1.8))
        # One row per figure: the same name can come in two units (MB/s and requests/s).
        names = [f"{r.section}: {r.name} ({r.unit})" for r in ratios]
        ys = list(range(len(ratios)))
        medians = [r.ratio or 0.0 for r in ratios]
        ceiling = [r.ceiling_median or 1.0 for r in ratios]
        lows = [max(0.0, m - min(r.product) / c) for m, r, c in zip(medians, ratios, ceiling, strict=True)]
        highs = [max(0.0, max(r.product) / c - m) for m, r, c in zip(medians, ratios, ceiling, strict=True)]
        colors = ["tab:green" if r.met else "tab:red" if r.met is False else "tab:gray" for r in ratios]
        ax.barh(ys, medians, xerr=[lows, highs], color=colors, capsize=3)
        for r, y in zip(ratios, ys, strict=True):
            if r.goal_ratio is not None:
                ax.plot([r.goal_ratio, r.goal_ratio], [y - 0.4, y + 0.4], color="black", lw=2)
        ax.set_yticks(ys, names, fontsize=8)
        ax.axvline(1.0, color="gray", ls="--", lw=1)
        ax.set_xlabel("product / ceiling (median of rounds; bars: min-max of rounds; black tick: goal)")
        ax.set_title("throughput: product / ceiling (green: goal met, red: missed, gray: no ratio goal)", fontsize=10)
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(folder / "ratios.png", dpi=110)
        plt.close(fig)
    for r in results:
        if not r.samples:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, values in r.samples.items():
            if not values:
                continue
            items = sorted(values)
            ys = [(i + 1) / len(items) for i in range(len(items))]
            ax.plot(items, ys, label=f"{label} (n={len(items):,}, p99 {fmt(items[int(0.99 * (len(items) - 1))])})")
        ax.set_xscale("log")
        ax.set_xlabel(r.unit if r.unit else "value")
        ax.set_ylabel("fraction ≤ x")
        ax.set_title(f"{r.section}: {r.name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        slug = "".join(ch if ch.isalnum() else "-" for ch in f"{r.section}-{r.name}".lower()).strip("-")
        fig.savefig(folder / f"{slug}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
