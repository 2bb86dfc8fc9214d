"""`streamrec bench`, its figures: the table on stdout, the markdown for the docs, and bench.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream_worker.devtools.bench_setup import Results


def rate_label(r: dict) -> str:
    """A rate's row name: "1000", or "1000 + hog" for the run with a CPU hog beside the worker."""
    return f"{r['rate']:g}" + (" + hog" if r.get("loaded") else "")


def table(results: Results) -> str:
    lines = [f"{'stage limit (each stage alone)':<44}{'per second':>14}"]
    lines += [f"{name:<44}{value:>14,.0f}" for name, value in results.stages.items()]
    d = results.drain
    wall = d["seconds first event to all committed"]
    loop_stages = ("decode", "state", "inference", "publish", "commit")  # one after another in the loop
    lines += [
        "",
        f"{'worker draining the backlog, events/s':<44}{d['events/s']:>14,.0f}",
        f"{'naive per-event consumer, events/s':<44}{results.naive_events_per_s:>14,.0f}",
        f"{'state per user, bytes':<44}{results.state_bytes['interactions bytes']:>14,.0f}"
        f"  ({results.config['recent_items']} interactions; {results.state_bytes['arrays bytes']:,.0f} with counters, "
        f"{results.state_bytes['allocated bytes']:,.0f} allocated in all)",
        f"  per flush while draining: {d['users per batch']:.0f} users/batch, batch_wait {d['batch_wait ms']:.1f} ms, "
        f"inference {d['inference ms']:.1f} ms, publish {d['publish ms']:.1f} ms, commit {d['commit ms']:.1f} ms",
        (
            "  share of the drain's wall time: "
            + ", ".join(f"{stage} {d[f'{stage} s total'] / wall:.0%}" for stage in loop_stages)
            + f", the rest (polling, loop) {max(1 - sum(d[f'{stage} s total'] for stage in loop_stages) / wall, 0):.0%}"
            if wall > 0  # a tiny backlog can be applied and committed between two scrapes of /metrics
            else "  share of the drain's wall time: not measured (drained between two scrapes of /metrics)"
        ),
        "",
        f"{'rate':>11} {'achieved':>9} {'lists':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'gen p50':>8} {'gen p99':>8} {'users/batch':>12} {'wait':>6} {'infer':>6} {'publ':>6} {'commit':>7}",
    ]
    for r in results.rates:
        lines.append(
            f"{rate_label(r):>11} {r['achieved events/s']:>9,.0f} {r['lists']:>7} {r['latency p50 ms']:>8.1f} "
            f"{r['latency p90 ms']:>8.1f} {r['latency p99 ms']:>8.1f} {r['latency max ms']:>8.1f} "
            f"{r['event to generated_at p50 ms']:>8.1f} {r['event to generated_at p99 ms']:>8.1f} "
            f"{r['users per batch']:>12.1f} {r['batch_wait ms']:>6.1f} {r['inference ms']:>6.1f} "
            f"{r['publish ms']:>6.1f} {r['commit ms']:>7.1f}"
        )
    lines += [
        f"{'rate':>11} {'cpu % of a core: worker':>24} {'broker':>7} {'producer':>9} {'reader':>7} {'machine busy':>13}"
    ]
    for r in results.rates:
        lines.append(
            f"{rate_label(r):>11} {r['cpu % worker']:>24.0f} {r['cpu % broker']:>7.0f} {r['cpu % producer']:>9.0f} "
            f"{r['cpu % reader']:>7.0f} {r['cpu % machine']:>12.0f}%"
        )
    lines += [
        "(latency: reader has the list - event_time of its newest event; gen: generated_at - event_time;",
        " wait/infer/publ/commit: the worker's mean ms per batch or flush over the run, from its /metrics)",
        "",
    ]
    lines += [f"{name:<44}{value:>13.2f}x" for name, value in results.ratios.items()]
    return "\n".join(lines)


def markdown(results: Results) -> str:
    """The headline figures as Markdown tables (what README's Results section shows)."""
    s, d = results.stages, results.drain
    rows = [f"Model: {results.config['kind']} ({results.environment['model']}).", ""]
    if "model b1 sequence users/s" in s:  # a sequence model has one path: ordered codes
        rows += ["| figure | users/s |", "|---|---:|"]
        rows += [f"| model only, batch {b}, users/s | {s[f'model b{b} sequence users/s']:,.0f} |" for b in (1, 256)]
    else:
        rows += ["| figure | dense input | sparse (embedding bag) | sparse / dense |", "|---|---:|---:|---:|"]
        for b in (1, 256):
            dense, sparse = s[f"model b{b} dense users/s"], s[f"model b{b} sparse users/s"]
            rows.append(f"| model only, batch {b}, users/s | {dense:,.0f} | {sparse:,.0f} | {sparse / dense:.2f}x |")
    rows += [
        "",
        "| figure | per second |",
        "|---|---:|",
        *[f"| stage limit: {name} | {value:,.0f} |" for name, value in s.items()],
        f"| **worker draining the backlog, events/s** | **{d['events/s']:,.0f}** |",
        f"| naive per-event consumer, events/s | {results.naive_events_per_s:,.0f} |",
        f"| drain / naive | {results.ratios['drain / naive']:.1f}x |",
        f"| state per user: {results.config['recent_items']} interactions / with counters / all allocated, bytes | "
        f"{results.state_bytes['interactions bytes']:,.0f} / {results.state_bytes['arrays bytes']:,.0f} / "
        f"{results.state_bytes['allocated bytes']:,.0f} |",
        "",
        "| rate (events/s) | lists | p50 ms | p90 ms | p99 ms | generated_at p50 / p99 ms | users/batch | "
        "batch wait / inference / publish / commit ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rates:
        rows.append(
            f"| {rate_label(r)} | {r['lists']:,} | {r['latency p50 ms']:.0f} | {r['latency p90 ms']:.0f} | "
            f"{r['latency p99 ms']:.0f} | {r['event to generated_at p50 ms']:.0f} / "
            f"{r['event to generated_at p99 ms']:.0f} | {r['users per batch']:.0f} | {r['batch_wait ms']:.0f} / "
            f"{r['inference ms']:.0f} / {r['publish ms']:.0f} / {r['commit ms']:.0f} |"
        )
    rows += [
        "",
        "| rate (events/s) | CPU, % of one core: worker | broker | load producer | reader | whole machine busy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rates:
        rows.append(
            f"| {rate_label(r)} | {r['cpu % worker']:.0f} | {r['cpu % broker']:.0f} | {r['cpu % producer']:.0f} | "
            f"{r['cpu % reader']:.0f} | {r['cpu % machine']:.0f}% of {results.environment['cpus']} cores |"
        )
    return "\n".join(rows) + "\n"


def plot(results: Results, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for r in results.rates:
        lat = np.sort(np.asarray(r["latencies ms"]))
        if len(lat):
            left.plot(
                lat,
                np.arange(1, len(lat) + 1) / len(lat),
                label=f"{rate_label(r)} events/s (p99 {r['latency p99 ms']:.0f} ms)",
            )
    left.axvline(50, color="grey", linestyle="--", linewidth=1)
    left.text(50, 0.02, " 50 ms", color="grey")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("event_time → list at the reader (ms, log scale)")
    left.set_ylabel("fraction of lists")
    left.set_title("Latency distribution per rate")
    left.grid(alpha=0.3)
    left.legend()
    bars = {**{k: v for k, v in results.stages.items()}, "worker drain events/s": results.drain["events/s"],
            "naive consumer events/s": results.naive_events_per_s}  # fmt: skip
    names = list(bars)
    colors = ["tab:blue"] * len(results.stages) + ["tab:green", "tab:red"]
    right.barh(names, [bars[n] for n in names], color=colors)
    right.set_xscale("log")
    right.invert_yaxis()
    right.set_xlabel("per second (log scale)")
    right.set_title("Stage limits (blue), worker drain (green), naive (red)")
    right.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
