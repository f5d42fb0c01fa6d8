"""RESULTS.md: the numbers of one benchmark run, ratios to the baselines, targets met or missed."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.measure import Sample, best_median

#: The baselines a dx sample is compared with, in its scenario.
BASELINES = ("psql \\copy", "pgloader", "psql \\copy TO + sftp put", "psql \\copy ×2 + key")
#: What a ratio of issue 25 compares of a dx sample with its baseline's wall time or CPU.
MEASURES: dict[str, Callable[[Sample], float | None]] = {
    "run": lambda s: s.wall_s,  # the run's own time, request to report
    "process": lambda s: s.process_s if s.process_s is not None else s.wall_s,  # `dx run --wait`, whole
    "cpu": lambda s: s.busy_s,  # the whole machine's busy core-seconds
}


def _groups(samples: list[Sample]) -> dict[tuple[str, str, int], list[Sample]]:
    groups: dict[tuple[str, str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.scenario, s.tool, s.rows)].append(s)
    return groups


def ratio(samples: list[Sample], scenario: str, tool: str, baseline: str,
          rows: int | None = None, measure: str = "run") -> tuple[float, float] | None:
    """(best/best, median/median) of ``tool`` to ``baseline`` in ``scenario`` (at ``rows``), by ``measure``
    (MEASURES: a baseline's own time or CPU either way); None if one is missing."""
    groups = _groups(samples)
    sizes = [rows] if rows is not None else sorted({n for (sc, t, n) in groups if sc == scenario and t == tool})
    mine = base = None
    for n in sizes:
        mine, base = groups.get((scenario, tool, n)), groups.get((scenario, baseline, n))
        if mine and base:
            break
    if not mine or not base:
        return None
    if measure == "run":
        (mb, mm), (bb, bm) = best_median(mine), best_median(base)
        return mb / bb, mm / bm
    ours = [v for v in map(MEASURES[measure], mine) if v is not None]
    theirs = [v for v in map(MEASURES["cpu" if measure == "cpu" else "run"], base) if v is not None]
    if not ours or not theirs:
        return None
    return min(ours) / min(theirs), statistics.median(ours) / statistics.median(theirs)


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _s(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(samples: list[Sample]) -> list[str]:
    """One row per scenario and tool: best, median, rows/s, peak memory, ratios to the baselines, and for
    dx the median whole ``dx run --wait`` process and its median overhead over the run's own time."""
    lines = ["| scenario | tool | rows | runs | best s | median s | rows/s (best) | peak RSS MB per process (max) "
             "| × psql \\copy (best / median) | × pgloader | `dx run --wait` s (median) "
             "| overhead s (median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    groups = _groups(samples)
    for (scenario, tool, rows), group in groups.items():
        if scenario == "scaling":
            continue
        best, median = best_median(group)
        peaks = [max(p) for p in zip(*(s.peak_mb for s in group), strict=False)]
        cells = []
        for baseline in ("psql \\copy", "pgloader"):
            r = None if tool in BASELINES else ratio(samples, scenario, tool, baseline, rows)
            if r is None and baseline == "psql \\copy" and tool not in BASELINES:
                r = ratio(samples, scenario, tool, "psql \\copy TO + sftp put", rows)
            cells.append(f"{r[0]:.2f} / {r[1]:.2f}" if r else "")
        lines.append(f"| {scenario} | {tool} | {rows:,} | {len(group)} | {best:.2f} | {median:.2f} "
                     f"| {rows / best:,.0f} | {', '.join(f'{p:.0f}' for p in peaks)} | {cells[0]} "
                     f"| {cells[1]} | {_s(_median([s.process_s for s in group]))} "
                     f"| {_s(_median([s.overhead_s for s in group]))} |")
    return lines


def scaling(samples: list[Sample]) -> list[str]:
    """Throughput against the number of worker processes."""
    runs = [s for s in samples if s.scenario == "scaling" and s.tool not in BASELINES]
    if not runs:
        return []
    after = [s for s in samples if s.scenario == "scaling" and s.tool == "psql \\copy"]
    lines = ["| workers | wall s | rows/s | × psql \\copy (the run after it) | peak RSS MB per worker |",
             "| ---: | ---: | ---: | ---: | --- |"]
    for i, s in enumerate(runs):
        vs = f"{s.wall_s / after[i].wall_s:.2f}" if i < len(after) else ""
        lines.append(f"| {len(s.peak_mb)} | {s.wall_s:.2f} | {s.rows_per_s:,.0f} | {vs} "
                     f"| {', '.join(f'{p:.0f}' for p in s.peak_mb)} |")
    return lines


def targets(samples: list[Sample], rows: int, memory_rows: int, checks: list[tuple[str, str, float]],
            small_target_s: float, memory_target_mb: float, overhead_target_s: float) -> list[str]:
    """Each target of issue 6: measured, met or missed (and by how much)."""
    lines = ["| target | measured (best / median) | verdict |", "| --- | --- | --- |"]

    def verdict(value: float, limit: float) -> str:
        return "met" if value <= limit else f"**missed** by {value / limit - 1:.0%}"

    for scenario, baseline, limit in checks:
        tools = {s.tool for s in samples if s.scenario == scenario and s.tool.startswith("dx")}
        for tool in sorted(tools):
            r = ratio(samples, scenario, tool, baseline, rows)
            if r and limit < 1:  # "at least 1/limit times faster"
                lines.append(f"| {scenario}: {tool} ≥ {1 / limit:.0f}× faster than {baseline} "
                             f"| {1 / r[0]:.1f}× / {1 / r[1]:.1f}× faster | {verdict(r[0], limit)} (best), "
                             f"{verdict(r[1], limit)} (median) |")
            elif r:
                lines.append(f"| {scenario}: {tool} ≤ {limit}× {baseline} | {r[0]:.2f}× / {r[1]:.2f}× "
                             f"| {verdict(r[0], limit)} (best), {verdict(r[1], limit)} (median) |")
    small = [s.wall_s for s in samples if s.scenario == "small"]
    if small:
        lines.append(f"| 100-row run ≤ {small_target_s} s, request to report | {min(small):.2f} s / "
                     f"{statistics.median(small):.2f} s | {verdict(statistics.median(small), small_target_s)} |")
    for n in sorted({rows, memory_rows}):
        peaks = [max(s.peak_mb) for s in samples if s.scenario == "memory" and s.rows == n and s.tool.startswith("dx")]
        if peaks:
            lines.append(f"| worker peak RSS < {memory_target_mb} MB at {n:,} rows | {max(peaks):.0f} MB "
                         f"| {verdict(max(peaks), memory_target_mb)} |")
    overheads: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        if s.overhead_s is not None:
            overheads[s.scenario].append(s.overhead_s)
    medians = {scenario: statistics.median(o) for scenario, o in overheads.items()}
    if medians:
        lines.append(f"| dx run --wait overhead over the run's own time: at most {overhead_target_s} s "
                     f"| median {', '.join(f'{sc} {m:.2f} s' for sc, m in medians.items())} "
                     f"| {verdict(max(medians.values()), overhead_target_s)} (largest median) |")
    return lines


def targets_25(samples: list[Sample], rows: int, checks: list[tuple[str, str, float, str]]) -> list[str]:
    """Issue 25's ratios: measured (best / median), met or missed; the ones this run did not measure say so."""
    what = {"run": "the run's own time", "process": "`dx run --wait`, the whole process", "cpu": "machine CPU"}
    lines = ["| target | measured (best / median) | verdict |", "| --- | --- | --- |"]
    for scenario, baseline, limit, measure in checks:
        tools = sorted({s.tool for s in samples if s.scenario == scenario and s.tool.startswith("dx")})
        for tool in tools or ["dx"]:
            r = ratio(samples, scenario, tool, baseline, rows, measure)
            head = f"| {scenario}: {what[measure]} ≤ {limit}× {baseline} "
            if r is None:
                lines.append(head + "| not measured in this run | — |")
                continue
            met = ["met" if v <= limit else f"**missed** by {v / limit - 1:.0%}" for v in r]
            lines.append(head + f"| {r[0]:.2f}× / {r[1]:.2f}× | {met[0]} (best), {met[1]} (median) |")
    return lines


#: The kinds of process the CPU table shows one by one (``measure.process_kind``); the rest is "other".
CPU_KINDS = ("dx worker", "dx run", "postgres backend", "postgres parallel worker", "sshd", "psql", "pgloader",
             "kernel threads")


def _breakdown(samples: list[Sample], parts: Callable[[Sample], dict[str, float]], order: tuple[str, ...]) -> list[str]:
    """Median seconds per part of each sample (``parts``), per scenario and tool: the parts of
    ``order`` that occur, one column each, the rest as "other", and all."""
    groups = {k: g for k, g in _groups(samples).items() if any(parts(s) for s in g)}
    if not groups:
        return []
    shown = [k for k in order if any(parts(s).get(k) for g in groups.values() for s in g)]
    lines = [f"| scenario | tool | rows | {' | '.join(shown)} | other | all |",
             f"| --- | --- | ---: |{' ---: |' * (len(shown) + 2)}"]
    for (scenario, tool, rows), group in groups.items():
        cells = [statistics.median(parts(s).get(k, 0.0) for s in group) for k in shown]
        other = statistics.median(sum(v for k, v in parts(s).items() if k not in shown) for s in group)
        whole = statistics.median(sum(parts(s).values()) for s in group)
        lines.append(f"| {scenario} | {tool} | {rows:,} | {' | '.join(f'{c:.2f}' for c in cells)} "
                     f"| {other:.2f} | {whole:.2f} |")
    return lines


def cpu_table(samples: list[Sample]) -> list[str]:
    """Median CPU seconds per kind of process, per scenario and tool: where a run's CPU goes."""
    return _breakdown(samples, lambda s: s.cpu_by, CPU_KINDS)


#: The kinds of a dx worker's threads (``measure.THREAD_KINDS``) the thread table shows, in order.
THREAD_ORDER = ("actors", "parse", "download", "ssh", "polars", "broker")


def thread_table(samples: list[Sample]) -> list[str]:
    """Median CPU seconds of the dx workers per kind of thread, per scenario: where a worker's CPU goes."""
    return _breakdown(samples, lambda s: s.worker_threads, THREAD_ORDER)


def targets_25_more(samples: list[Sample], rows: int, memory_rows: int, xml_rate: float,
                    memory_target_mb: float, scale_drop: float) -> list[str]:
    """Issue 25's other targets: XML records per second per worker, a worker's peak RSS on a 1 GB CSV
    and a 1 GB XML file, and the throughput of the large run against the ``rows`` one's."""
    lines = []
    xml = [s for s in samples if s.scenario == "xml" and s.tool.startswith("dx")]
    head = f"| XML: at least {xml_rate:,.0f} records/s per worker "
    if xml:
        rates = [s.rows_per_s / len(s.peak_mb) for s in xml]
        best, median = max(rates), statistics.median(rates)
        verdicts = ["met" if r >= xml_rate else f"**missed**: {r / xml_rate:.0%} of it" for r in (best, median)]
        lines.append(head + f"| {best:,.0f} / {median:,.0f} | {verdicts[0]} (best), {verdicts[1]} (median) |")
    else:
        lines.append(head + "| not measured in this run | — |")
    for scenario, what in (("memory", "CSV"), ("memory xml", "XML")):
        big = [s for s in samples if s.scenario == scenario and s.tool.startswith("dx") and s.rows > rows]
        head = f"| {what}: a file of 1 GB or more: a worker's peak RSS under {memory_target_mb:.0f} MB "
        if big:
            peak = max(max(s.peak_mb) for s in big)
            met = "met" if peak < memory_target_mb else f"**missed** by {peak / memory_target_mb - 1:.0%}"
            lines.append(head + f"| {peak:.0f} MB ({big[0].note.split(' queued')[0]}) | {met} |")
        else:
            lines.append(head + "| not measured in this run | — |")
    small = [s for s in samples if s.scenario == "memory" and s.tool.startswith("dx") and s.rows == rows]
    large = [s for s in samples if s.scenario == "memory" and s.tool.startswith("dx") and s.rows == memory_rows]
    head = f"| {memory_rows:,} rows: throughput within {scale_drop:.0%} of the {rows:,}-row run's "
    if small and large:
        def verdict(kept: float) -> str:
            return "met" if kept >= 1 - scale_drop else f"**missed**: {1 - kept:.0%} slower"
        best = max(s.rows_per_s for s in large) / max(s.rows_per_s for s in small)
        rate_large, rate_small = (statistics.median(s.rows_per_s for s in g) for g in (large, small))
        kept = rate_large / rate_small
        lines.append(head + f"| {rate_large:,.0f} against {rate_small:,.0f} rows/s, medians of {len(large)} "
                     f"and {len(small)} runs ({kept:.0%}; best against best {best:.0%}) "
                     f"| {verdict(best)} (best), {verdict(kept)} (median) |")
    else:
        lines.append(head + "| not measured in this run | — |")
    return lines


def render(samples: list[Sample], machine: dict[str, str], command: str, when: str, rows: int, memory_rows: int,
           checks: list[tuple[str, str, float]], small_target_s: float, memory_target_mb: float,
           overhead_target_s: float, sections: list[str], notes: list[str], kept: str,
           checks_25: list[tuple[str, str, float, str]] | None = None, more_25: list[str] | None = None) -> str:
    out = ["# Benchmark results", "", f"`{command}` — {when}. Written by `bench/run.py`; regenerate, do not edit"
           " above the notes marker.", "", "## Machine", "", "| | |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in machine.items()]
    out += ["", "Timings differ between machines of one kind and between runs (the load average above says "
            "whether anything else ran): the key scenarios are repeated, interleaved with their baselines, and "
            "reported as best and median.", "",
            "## Targets (issue 6)", "", *targets(samples, rows, memory_rows, checks, small_target_s,
                                                  memory_target_mb, overhead_target_s),
            *(["", "## Targets (issue 25)", "", *targets_25(samples, rows, checks_25), *(more_25 or [])]
              if checks_25 else []),
            "", "## Results", "",
            "Each dx run is the process `dx run MODULE --wait`, as a user runs it. Its s (and the ratios) "
            "are the run's own time, request to report: created_at to email_sent_at of its row. "
            "`dx run --wait` s is the whole process, spawn to exit; the overhead is that minus the run's "
            "own time (medians of the differences).", "", *table(samples)]
    if any(s.scenario == "scaling" for s in samples):
        out += ["", f"## Worker processes ({rows:,} rows overwrite)", "", *scaling(samples)]
    if cpu := cpu_table(samples):
        out += ["", "## Where the CPU goes", "",
                "CPU seconds per kind of process during each run (medians over the runs of a scenario and tool),"
                " read from /proc: dx's workers and its `dx run` client, PostgreSQL's session backends and"
                " parallel workers (the key build), OpenSSH's sshd (the SFTP server's encryption), the"
                " kernel's own threads (page writeback among them). \"all\" counts every process but the"
                " bench's own.", "", *cpu]
    if threads := thread_table(samples):
        out += ["", "## Where a dx worker's CPU goes", "",
                "The dx workers' CPU seconds per kind of thread (medians over the runs of a scenario), read"
                " from /proc/<pid>/task by the threads' OS names: the actors (plan, chunks and reduce: chunk"
                " files, the validation's Python, the binary COPY's encoding), the source's parse, the"
                " download writing the staging copy, the SSH transport (paramiko's encryption), Polars' own"
                " threads (the validation's expressions), the broker's consumers; \"other\": the rest (the"
                " main thread, the heartbeat) and what a thread spent after its last read.", "", *threads]
    out += ["", "## Every run", "",
            "Busy core-s: the CPU time the whole machine spent during the run, every process counted "
            "(PostgreSQL, sshd, workers, psql; other jobs' too, if any) but the bench's own, out of "
            f"{os.cpu_count()} × wall s.", "",
            "| scenario | tool | rows | wall s | `dx run --wait` s | overhead s | busy core-s | peak RSS MB "
            "| note |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    out += [f"| {s.scenario} | {s.tool} | {s.rows:,} | {s.wall_s:.2f} | {_s(s.process_s)} "
            f"| {_s(s.overhead_s)} | {_s(s.busy_s)} | {', '.join(f'{p:.0f}' for p in s.peak_mb)} | {s.note} |"
            for s in samples]
    out += ["", *sections]
    if notes:
        out += ["## Skipped", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out) + "\n" + kept


def kept_notes(path: Path, marker: str) -> str:
    """The hand-written part of an existing RESULTS.md (from the marker on)."""
    if path.exists():
        text = path.read_text()
        if marker in text:
            return text[text.index(marker):]
    return marker + "\n"
