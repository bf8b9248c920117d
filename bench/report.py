"""The results: ``bench/results.json`` (everything, every repeat) and the Markdown tables printed to stdout and
pasted into BENCHMARKS.md. Targets are docs/ARCHITECTURE.md's "Performance targets"; the report says met or missed and by
how much, it does not fail the run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def write(results: dict[str, Any], path: Path = RESULTS) -> None:
    """Atomically replace ``path`` (``results.json.tmp`` then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def load(path: Path = RESULTS) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def submit_table(sub: dict[str, Any]) -> str:
    lines = [
        "| accounts | clients | API procs | submits/s | p50 ms | p99 ms | pgbench tx/s | pgbench p50 / p99 ms | ratio "
        "| non-202 | API CPU µs/req | load gen CPU | commits/submit |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in sub.get("cells", []):
        lines.append(
            f"| {'1,000 spread' if c['scenario'] == 'spread' else 'one hot'} | {c['clients']} | {c['api_processes']} "
            f"| {_f(c['rps'])} | {_f(c['p50_ms'])} | {_f(c['p99_ms'])} | {_f(c['pgbench_tps'])} "
            f"| {_f(c['pgbench_p50_ms'])} / {_f(c['pgbench_p99_ms'])} | {_x(c['ratio'])} | {c['non_202']} "
            f"| {_f(c['api_cpu_us_per_request'], 0)} | {_pct(c.get('loadgen_cpu_share'))} "
            f"| {_f(c.get('commits_per_submit'), 3)} |"
        )
    return "\n".join(lines)


def settle_table(st: dict[str, Any]) -> str:
    noop = st.get("arq_noop", {})
    lines = [
        "| mode | settled/s (steady) | wall /s | arq no-op jobs/s | ratio | worker CPU µs/task | provider queries/task "
        "| complete→settled p50 / p99 ms, burst | same, paced |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for mode, m in st.get("modes", {}).items():
        lines.append(
            f"| {mode} | {_f(m['rate'])} | {_f(m['wall_rate'])} | {_f(noop.get('rate'))} | {_x(m['ratio'])} "
            f"| {_f(m['worker_cpu_us_per_task'], 0)} | {_f(m['queries_per_task'], 2)} "
            f"| {_f(m['burst_complete_to_settled_p50_ms'], 0)} / {_f(m['burst_complete_to_settled_p99_ms'], 0)} "
            + (
                f"| {_f(m['paced_complete_to_settled_p50_ms'], 0)} / {_f(m['paced_complete_to_settled_p99_ms'], 0)} "
                f"@ {_f(m['paced_rate'], 0)}/s |"
                if m.get("paced_complete_to_settled_p99_ms") is not None
                else "| - |"
            )
        )
    return "\n".join(lines)


def inflight_table(inf: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| tasks | all in flight at once | creates/s | worker RSS idle → peak MB | RSS while waiting MB "
            "| CPU while waiting (of one core) | queries/task while waiting | settled (in time) | settled/s "
            "| queries/settled task |",
            "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
            f"| {_f(inf.get('tasks'))} | {'yes' if inf.get('all_in_flight_at_once') else 'no'} "
            f"(peak {_f(inf.get('running_peak'))} running) | {_f(inf.get('create_rate'))} "
            f"| {_f(inf.get('idle_rss_mb'))} → {_f(inf.get('peak_rss_mb'))} | {_f(inf.get('waiting_rss_mb'))} "
            f"| {_pct(inf.get('waiting_cpu_share'))} | {_f(inf.get('queries_while_waiting_per_task'), 3)}"
            f"{' (' + _f(inf['queries_per_second_while_waiting']) + '/s)' if inf.get('queries_per_second_while_waiting') else ''} "
            f"| {_f(inf.get('settled'))} | {_f(inf.get('settle_rate'))} | {_f(inf.get('queries_per_settled_task'), 2)} |",
        ]
    )


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _cell(sub: dict[str, Any], scenario: str, clients: int, procs: int) -> dict[str, Any] | None:
    for c in sub.get("cells", []):
        if c["scenario"] == scenario and c["clients"] == clients and c["api_processes"] == procs:
            return dict(c)
    return None


def targets(results: dict[str, Any]) -> list[str]:
    """docs/ARCHITECTURE.md's performance targets, met or missed, from whatever parts this run measured."""
    out: list[str] = []
    sub = results.get("submit", {})
    for procs in (1, 2):
        c = _cell(sub, "spread", 64, procs)
        if c and c["ratio"] is not None:
            ok = c["ratio"] >= 0.5
            out.append(
                f"- Submit throughput ≥ 0.5 x pgbench (64 clients, 1,000 accounts, {procs} API process"
                f"{'es' if procs > 1 else ''}): **{c['ratio']:.2f}x** — {'met' if ok else 'missed'}"
                f" ({c['rps']:,.0f}/s vs {c['pgbench_tps']:,.0f}/s)."
            )
            verdict = "met" if c["p99_ms"] < 50 else f"missed ({c['p99_ms'] / 50:.1f}x the limit)"
            out.append(
                f"- Submit p99 < 50 ms at 64 clients ({procs} process{'es' if procs > 1 else ''}): "
                f"**{c['p99_ms']:,.0f} ms** — {verdict}."
            )
        h = _cell(sub, "hot", 64, procs)
        if h and h["ratio"] is not None:
            ok = h["ratio"] >= 3
            out.append(
                f"- One hot account ≥ 3 x pgbench's hot-row rate at 64 clients ({procs} process"
                f"{'es' if procs > 1 else ''}): **{h['ratio']:.2f}x** — {'met' if ok else 'missed'}"
                f" ({h['rps']:,.0f}/s vs {h['pgbench_tps']:,.0f}/s)."
            )
    st = results.get("settle", {})
    for mode, m in st.get("modes", {}).items():
        if m.get("ratio") is not None:
            ok = m["ratio"] >= 0.7
            out.append(
                f"- Settle ≥ 0.7 x arq no-op ({mode}): **{m['ratio']:.2f}x** — {'met' if ok else 'missed'}"
                f" ({m['rate']:,.0f} tasks/s vs {st['arq_noop']['rate']:,.0f} jobs/s)."
            )
    cb = st.get("modes", {}).get("callbacks")
    if cb and cb.get("paced_complete_to_settled_p99_ms") is not None:
        p99 = cb["paced_complete_to_settled_p99_ms"]
        out.append(
            f"- Callback-to-settled p99 < 500 ms (paced, {cb['paced_rate']:.0f} tasks/s): **{p99:,.0f} ms** — "
            f"{'met' if p99 < 500 else 'missed'}; under a burst of queued work it is "
            f"{cb['burst_complete_to_settled_p99_ms']:,.0f} ms."
        )
    inf = results.get("inflight", {})
    if inf:
        ok = inf["peak_rss_mb"] < 300 and inf["all_in_flight_at_once"]
        out.append(
            f"- {inf['tasks']:,} in-flight video tasks in one worker under 300 MB RSS: **peak {inf['peak_rss_mb']:.0f} MB**"
            f" — {'met' if ok else 'missed'}"
            + ("" if inf["all_in_flight_at_once"] else " (not all were in flight at once in this run)")
            + "."
        )
        rl = int(inf.get("provider_stats", {}).get("rateLimited", 0))
        out.append(
            f"- Provider limits never exceeded: the benchmarks raise the limits on both sides, so this is not what they "
            f"test (the test suite does); the simulator answered {rl} rate-limited calls in the in-flight run."
        )
    return out


def render(results: dict[str, Any]) -> str:
    parts = []
    m = results.get("machine", {})
    if m:
        parts.append(
            f"Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), Postgres {m.get('postgres')}, Redis {m.get('redis')}, "
            f"Python {m.get('python')}, load average at start {' '.join(m.get('loadavg_at_start', []))}; "
            f"mode: {'quick' if results.get('quick') else 'full'}; took {results.get('took_seconds', 0):.0f} s; "
            f"code: {m.get('git_commit')} + {m.get('git_changed_files')} changed files."
        )
    if "submit" in results:
        parts.append(
            "### Submit: POST /v1/jobs vs pgbench of the same SQL (medians of repeats)\n\n"
            + submit_table(results["submit"])
        )
    if "settle" in results:
        parts.append(
            "### Settle: one worker, provider answers at once, vs arq no-op jobs\n\n" + settle_table(results["settle"])
        )
    if "inflight" in results:
        parts.append(
            "### In flight: video tasks waiting at the provider, one worker\n\n" + inflight_table(results["inflight"])
        )
    if "variants" in results:
        from bench.variants import table

        parts.append(
            "### Variants: proposed fixes applied from outside (bench/launch.py)\n\n" + table(results["variants"])
        )
    t = targets(results)
    if t:
        parts.append("### Performance targets (docs/ARCHITECTURE.md)\n\n" + "\n".join(t))
    return "\n\n".join(parts)
