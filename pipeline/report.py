"""One self-contained HTML report of a sweep: progress, failures, runtimes and outputs.

The module is pure: :func:`build_report` takes a :class:`ReportData` (the frames
the caller loaded from the state database and the result store) and returns one
HTML document as a string. :func:`write_report` writes it atomically.

The document needs nothing from outside: figures are inline ``<svg>`` drawn by
matplotlib (no pyplot, so no global backend state), styles are inline CSS, and
there is no script at all. A Content-Security-Policy ``<meta>`` forbids scripts
and every remote load, so a string that escaped escaping still could not run.
Every string that comes from users or volunteers (sweep names, reasons, column
names, parameter values) is escaped with :func:`html.escape`.

Sections, each a ``<section>`` with a stable ``id``:

- ``summary``: sweep, version, generation time, counts by state, totals;
- ``progress``: cumulative submitted, in flight, done and failed over time;
- ``throughput``: results received per hour;
- ``failures``: failure reasons of failed, exhausted, lost and bad-output points;
- ``runtime``: distributions of CPU and elapsed time, one value per result;
- ``outputs``: a histogram per numeric output column and, for grid sweeps, a
  heatmap of its mean over two grid parameters.

Every figure is a ``<figure>`` with ``id`` and ``data-figure`` attributes and a
``<figcaption>``. A section whose data is not there yet says so in plain words.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.errors import ConfigError
from pipeline.harvest import META_COLUMNS
from pipeline.track import STATUS_ORDER

__all__ = [
    "MAX_OUTPUT_FIGURES",
    "META_COLUMNS",
    "STATE_COLOURS",
    "STATE_ORDER",
    "ReportData",
    "build_report",
    "numeric_outputs",
    "write_report",
]

#: Point states in display order (tracking's order).
STATE_ORDER = STATUS_ORDER

#: One colour per state, used in the table and the charts.
STATE_COLOURS = {
    "planned": "#b8bec9",
    "queued": "#7fb3f5",
    "running": "#2f6fd6",
    "done": "#3fae5a",
    "harvested": "#1d7a3a",
    "failed": "#d83b3b",
    "exhausted": "#8f1d1d",
    "cancelled": "#7a7f88",
    "lost": "#f0a020",
    "bad_output": "#c46a10",
    "purged": "#a8a29e",
}
_OTHER_COLOUR = "#cccccc"

#: States whose points count as failures in the failure-reason section.
FAILURE_STATES = ("failed", "exhausted", "lost", "bad_output")


#: At most this many output figures (histograms and heatmaps together).
MAX_OUTPUT_FIGURES = 12
#: At most this many rows in the failure-reason table, and bars in its chart.
MAX_REASON_ROWS = 30
MAX_REASON_BARS = 10
#: Heatmap cells get their value written in them up to this many per axis.
_ANNOTATE_CELLS = 12

_POINT_COLUMNS = ("point_id", "attempt", "state", "reason")
_ATTEMPT_COLUMNS = (
    "wu_name",
    "point_id",
    "attempt",
    "reserved_at",
    "submitted_at",
    "finished_at",
    "outcome",
    "reason",
)

_MPL_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "text.usetex": False,
    "svg.hashsalt": "boinc-pipeline-report",
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "axes.edgecolor": "#8a9099",
    "axes.titlesize": 10.0,
    "legend.frameon": False,
}

_BAR = "#4a78b5"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, eq=False)
class ReportData:
    """Everything a report shows: the sweep's identity and spec, and three frames.

    ``points`` has one row per point (``point_id``, ``attempt``, ``state``,
    ``reason`` and ``p.<param>`` columns); ``attempts`` one row per workunit
    (``wu_name``, ``point_id``, ``attempt``, ``reserved_at``, ``submitted_at``,
    ``finished_at``, ``outcome``, ``reason``); ``results`` the harvested rows
    (the columns of :data:`META_COLUMNS`, ``p.<param>`` columns and the outputs,
    possibly several rows per result). Times are unix seconds. Any frame may be
    empty, even without columns.
    """

    sweep: str
    version: int
    generated_at: float
    spec: dict[str, Any] = field(default_factory=dict)
    grid_params: list[str] = field(default_factory=list)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    attempts: pd.DataFrame = field(default_factory=pd.DataFrame)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------- helpers


def _e(value: object) -> str:
    """Return ``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def _clean(value: object, limit: int = 80) -> str:
    """Return ``value`` as one short line: control characters collapsed, long text cut."""
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mpl_text(value: object, limit: int = 60) -> str:
    """Return a user string for matplotlib: one line, cut to ``limit`` characters.

    Math text is off (``text.parse_math``), so ``$`` in a name is drawn as it is.
    """
    return _clean(value, limit)


def _slug(value: object, taken: set[str]) -> str:
    """Return an id fragment made of ``[a-z0-9-]`` for ``value``, unique within ``taken``."""
    base = re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")[:40] or "column"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 172800:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} d"


def _with_columns(frame: pd.DataFrame | None, columns: Iterable[str]) -> pd.DataFrame:
    """Return a copy of ``frame`` that has every column in ``columns`` (missing ones empty)."""
    out = pd.DataFrame() if frame is None else frame.copy()
    out.columns = [str(c) for c in out.columns]
    for name in columns:
        if name not in out.columns:
            out[name] = pd.Series([None] * len(out), index=out.index, dtype=object)
    return out


def _numbers(series: pd.Series) -> np.ndarray:
    """Return the finite float values of ``series`` (anything else dropped)."""
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(values[np.isfinite(values)], dtype=float)


def _as_datetimes(times: np.ndarray) -> np.ndarray:
    """Return unix seconds as ``datetime64[ms]`` for matplotlib's date axis."""
    return np.asarray(np.round(times * 1000.0), dtype="int64").astype("datetime64[ms]")


def _hashable(value: object) -> object:
    """Return ``value`` if it can be a group key, else its text."""
    if value is None or isinstance(value, (str, int, float, bool, np.generic)):
        return value
    return repr(value)


def _sort_key(value: object) -> tuple[int, float, str]:
    """Sort numbers numerically before text, and both before missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _fmt_param(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return _clean(value, 16)


# ------------------------------------------------------------------------- figures

_SVG_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_ROOT_SIZE = re.compile(r'(<svg\b[^>]*?)\s+width="([\d.]+)pt"\s+height="([\d.]+)pt"')
_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_URL = re.compile(r"url\(#([^)]+)\)")
_SVG_HREF = re.compile(r'href="#([^"]+)"')


def _svg(fig: Figure, prefix: str, label: str) -> str:
    """Return ``fig`` as an inline ``<svg>`` element whose ids all start with ``prefix``."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", buf.getvalue(), count=1))
    text = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _SVG_URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", text)
    text = _SVG_HREF.sub(lambda m: f'href="#{prefix}-{m.group(1)}"', text)

    def size(m: re.Match[str]) -> str:
        width = float(m.group(2)) * 4 / 3  # points to CSS pixels
        return f'{m.group(1)} role="img" aria-label="{_e(label)}" style="max-width:{width:.0f}px"'

    return _SVG_ROOT_SIZE.sub(size, text, count=1).strip()


@dataclass
class _Figures:
    """Renders matplotlib figures into ``<figure>`` elements with unique ids."""

    count: int = 0

    def render(
        self,
        fig_id: str,
        kind: str,
        caption: str,
        draw: Callable[[Figure], None],
        size: tuple[float, float] = (7.6, 3.4),
        extra_attrs: str = "",
    ) -> str:
        self.count += 1
        with mpl.rc_context(_MPL_RC):
            fig = Figure(figsize=size, layout="constrained")
            draw(fig)
            svg = _svg(fig, f"f{self.count}", caption)
        return (
            f'<figure id="{_e(fig_id)}" data-figure="{_e(kind)}"{extra_attrs}>'
            f"{svg}<figcaption>{_e(caption)}</figcaption></figure>"
        )


def _date_axis(ax: Axes) -> None:
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Return an HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------ sections


def _summary(
    data: ReportData,
    points: pd.DataFrame,
    attempts: pd.DataFrame,
    results: pd.DataFrame,
    unique_results: pd.DataFrame,
) -> str:
    parts: list[str] = []
    spec_rows: list[tuple[str, str]] = []
    for key in ("image", "command"):
        value = data.spec.get(key)
        if value is not None:
            if isinstance(value, (list, tuple)):
                value = " ".join(str(v) for v in value)
            spec_rows.append((key, f"<code>{_e(_clean(value, 300))}</code>"))
    params = data.spec.get("parameters")
    if isinstance(params, dict) and params:
        names = ", ".join(str(k) for k in params)
        spec_rows.append(("parameters", _e(_clean(names, 300))))
    if data.grid_params:
        spec_rows.append(("grid", _e(" × ".join(data.grid_params))))
    if spec_rows:
        parts.append(_table(["spec", ""], spec_rows, "spec"))

    counts = points["state"].dropna().astype(str).value_counts()
    total = len(points)
    if total == 0:
        parts.append(_note("No points are recorded for this sweep yet."))
    else:
        states = [s for s in STATE_ORDER if s in counts.index]
        states += sorted(s for s in counts.index if s not in STATE_ORDER)
        rows = []
        for state in states:
            n = int(counts[state])
            colour = STATE_COLOURS.get(state, _OTHER_COLOUR)
            swatch = f'<span class="swatch" style="background:{colour}"></span>'
            rows.append(
                (
                    f'{swatch}<span class="state">{_e(state)}</span>',
                    _fmt_int(n),
                    f"{100.0 * n / total:.1f} %",
                )
            )
        rows.append(("<strong>total</strong>", f"<strong>{_fmt_int(total)}</strong>", "100 %"))
        parts.insert(0, _state_bar(counts, states, total))
        parts.append(_table(["state", "points", "share"], rows, "states"))

    cpu = _numbers(unique_results["cpu_time"])
    hosts = unique_results["hostid"].dropna().nunique()
    submitted = _numbers(attempts["submitted_at"])
    received = _numbers(unique_results["received_time"])
    totals = [
        ("points", _fmt_int(total)),
        ("workunits submitted", _fmt_int(len(submitted))),
        ("attempts recorded", _fmt_int(len(attempts))),
        ("results harvested", _fmt_int(len(unique_results))),
        ("result rows", _fmt_int(len(results))),
        ("volunteer hosts", _fmt_int(int(hosts))),
        ("total CPU time", _fmt_duration(float(cpu.sum())) if len(cpu) else "–"),
        ("first submission", _e(_fmt_time(float(submitted.min()))) if len(submitted) else "–"),
        ("last result received", _e(_fmt_time(float(received.max()))) if len(received) else "–"),
    ]
    parts.append(_table(["totals", ""], totals, "totals"))
    return "".join(parts)


def _state_bar(counts: pd.Series, states: list[str], total: int) -> str:
    """Return a stacked horizontal bar of the states, drawn with plain HTML."""
    spans = []
    for state in states:
        n = int(counts[state])
        colour = STATE_COLOURS.get(state, _OTHER_COLOUR)
        spans.append(
            f'<span style="width:{100.0 * n / total:.3f}%;background:{colour}" '
            f'title="{_e(state)}: {n}"></span>'
        )
    return f'<div class="statebar" aria-hidden="true">{"".join(spans)}</div>'


def _progress(figs: _Figures, attempts: pd.DataFrame, unique_results: pd.DataFrame) -> str:
    submitted = np.sort(_numbers(attempts["submitted_at"]))
    done_by_wu: dict[str, float] = {}
    for wu, t in zip(unique_results["wu_name"], unique_results["received_time"], strict=True):
        value = pd.to_numeric(pd.Series([t]), errors="coerce").iloc[0]
        if wu is not None and not pd.isna(wu) and pd.notna(value):
            done_by_wu[str(wu)] = min(float(value), done_by_wu.get(str(wu), math.inf))
    finished = pd.to_numeric(attempts["finished_at"], errors="coerce")
    outcome = attempts["outcome"].astype(object)
    for wu, t, out in zip(attempts["wu_name"], finished, outcome, strict=True):
        if out == "done" and pd.notna(t) and str(wu) not in done_by_wu:
            done_by_wu[str(wu)] = float(t)
    done = np.sort(np.array(list(done_by_wu.values()), dtype=float))
    failed = np.sort(_numbers(finished[outcome == "failed"]))
    ended = np.sort(_numbers(finished[outcome.notna()]))
    # A workunit whose result was received but whose attempt is not closed yet has ended too.
    open_done = [
        t for wu, t in done_by_wu.items() if wu not in set(attempts["wu_name"][outcome.notna()])
    ]
    ended = np.sort(np.concatenate([ended, np.array(open_done, dtype=float)]))

    if len(submitted) == 0 and len(done) == 0:
        return _note("Nothing has been submitted yet, so there is no progress to show.")
    all_times = np.concatenate([submitted, done, failed])
    start, end = float(all_times.min()), float(all_times.max())
    end = max(end, start + 60.0)
    end += (end - start) * 0.02  # the last step stays visible
    grid = np.linspace(start, end, 400)

    def cumulative(times: np.ndarray) -> np.ndarray:
        return np.searchsorted(times, grid, side="right").astype(float)

    n_sub, n_done, n_fail = cumulative(submitted), cumulative(done), cumulative(failed)
    in_flight = np.clip(n_sub - cumulative(ended), 0, None)
    x = _as_datetimes(grid)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        # failed at the bottom, done stacked on it: the top edge is everything finished
        ax.fill_between(
            x,
            0,
            n_fail,
            step="post",
            color=STATE_COLOURS["failed"],
            alpha=0.55,
            linewidth=0,
            label=f"failed ({len(failed):,})",
        )
        ax.fill_between(
            x,
            n_fail,
            n_fail + n_done,
            step="post",
            color=STATE_COLOURS["done"],
            alpha=0.45,
            linewidth=0,
            label=f"done ({len(done):,})",
        )
        ax.step(x, n_fail + n_done, where="post", color=STATE_COLOURS["done"], linewidth=1.0)
        ax.step(
            x,
            n_sub,
            where="post",
            color="#333a44",
            linewidth=1.6,
            label=f"submitted ({len(submitted):,})",
        )
        ax.step(
            x,
            in_flight,
            where="post",
            color=STATE_COLOURS["running"],
            linewidth=1.4,
            linestyle="--",
            label="in flight (submitted, not finished)",
        )
        ax.set_ylabel("workunits (cumulative)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        _date_axis(ax)
        ax.legend(loc="upper left")

    caption = (
        "Progress over time: workunits submitted and in flight; failed and done (first "
        "result received) stacked, cumulative."
    )
    return figs.render("fig-progress", "progress", caption, draw)


def _throughput(figs: _Figures, unique_results: pd.DataFrame, now: float) -> str:
    received = np.sort(_numbers(unique_results["received_time"]))
    if len(received) == 0:
        return _note("No result has been received yet, so there is no throughput to show.")
    span_h = (received[-1] - received[0]) / 3600.0
    bin_h = max(1, math.ceil(span_h / 120.0))
    first = math.floor(received[0] / 3600.0) * 3600.0
    n_bins = max(1, math.ceil((received[-1] - first + 1) / (bin_h * 3600.0)))
    edges = first + np.arange(n_bins + 1) * bin_h * 3600.0
    counts, _ = np.histogram(received, bins=edges)
    rate = counts / float(bin_h)
    recent = int(np.count_nonzero(received > now - 86400.0))
    mean_rate = len(received) / max(span_h, 1.0)

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        left = _as_datetimes(edges[:-1])
        width = np.timedelta64(int(bin_h * 3600 * 1000 * 0.9), "ms")
        ax.bar(left, rate, width=width, align="edge", color=_BAR)
        ax.set_ylabel("results per hour")
        _date_axis(ax)

    per = "hour" if bin_h == 1 else f"{bin_h} hours (shown per hour)"
    caption = f"Throughput: results received per {per}."
    stats = _table(
        ["throughput", ""],
        [
            ("results received", _fmt_int(len(received))),
            ("mean per hour", _fmt_num(mean_rate)),
            ("last 24 h", f"{_fmt_int(recent)} ({_fmt_num(recent / 24.0)} per hour)"),
            ("busiest hour", _fmt_num(float(rate.max()))),
        ],
        "totals",
    )
    return figs.render("fig-throughput", "throughput", caption, draw, size=(7.6, 2.8)) + stats


def _failures(figs: _Figures, points: pd.DataFrame) -> str:
    failed = points[points["state"].isin(FAILURE_STATES)]
    if len(failed) == 0:
        return _note("No point has failed.")
    reasons = failed["reason"].map(
        lambda r: "(no reason recorded)" if r is None or pd.isna(r) or str(r) == "" else str(r)
    )
    table = pd.DataFrame({"reason": reasons, "state": failed["state"].astype(str)})
    by_reason = table.groupby("reason", sort=False)["state"]
    counts = by_reason.size().sort_values(ascending=False, kind="stable")
    total = len(table)
    rows = []
    for reason, n in counts.iloc[:MAX_REASON_ROWS].items():
        states = by_reason.get_group(reason).value_counts()
        breakdown = ", ".join(f"{_e(s)} {int(c):,}" for s, c in states.items())
        rows.append(
            (
                f'<span class="reason">{_e(_clean(reason, 300))}</span>',
                _fmt_int(int(n)),
                f"{100.0 * int(n) / total:.1f} %",
                breakdown,
            )
        )
    html_table = _table(["reason", "points", "share", "states"], rows, "reasons")
    extra = ""
    if len(counts) > MAX_REASON_ROWS:
        rest = counts.iloc[MAX_REASON_ROWS:]
        extra = _note(
            f"The table shows the {MAX_REASON_ROWS} most frequent reasons; {len(rest):,} other "
            f"reasons cover {int(rest.sum()):,} more points."
        )
    top = counts.iloc[:MAX_REASON_BARS][::-1]

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        labels = [_mpl_text(r, 48) for r in top.index]
        ax.barh(range(len(top)), top.to_numpy(dtype=float), color=STATE_COLOURS["failed"])
        ax.set_yticks(range(len(top)), labels)
        ax.set_xlabel("points")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="y", visible=False)

    height = 1.0 + 0.32 * len(top)
    caption = (
        f"Failure reasons: the {len(top)} most frequent among {total:,} failed, exhausted, "
        "lost or bad-output points."
    )
    chart = figs.render("fig-failures", "failures", caption, draw, size=(7.6, height))
    return chart + html_table + extra


def _runtime(figs: _Figures, unique_results: pd.DataFrame) -> str:
    cpu = _numbers(unique_results["cpu_time"])
    elapsed = _numbers(unique_results["elapsed_time"])
    if len(cpu) == 0 and len(elapsed) == 0:
        return _note("No result has been harvested yet, so there are no run times to show.")
    both = np.concatenate([cpu, elapsed])
    median = float(np.median(both))
    unit, scale = (
        ("h", 3600.0) if median >= 7200 else ("min", 60.0) if median >= 120 else ("s", 1.0)
    )

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, 2, sharey=False)
        for ax, values, name, colour in (
            (axes[0], cpu, "CPU time", "#5b8bd0"),
            (axes[1], elapsed, "elapsed time", "#8a6bbf"),
        ):
            if len(values):
                ax.hist(values / scale, bins=_bins(len(values)), color=colour)
            else:
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(f"{name} ({unit})")
            ax.set_ylabel("results")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(name)

    rows = []
    for name, values in (("CPU time", cpu), ("elapsed time", elapsed)):
        if len(values):
            rows.append(
                (
                    name,
                    _fmt_int(len(values)),
                    _fmt_duration(float(values.min())),
                    _fmt_duration(float(np.median(values))),
                    _fmt_duration(float(np.percentile(values, 90))),
                    _fmt_duration(float(values.max())),
                    _fmt_duration(float(values.sum())),
                )
            )
        else:
            rows.append((name, "0", "–", "–", "–", "–", "–"))
    caption = "Run time distribution: CPU time and elapsed time, one value per result."
    chart = figs.render("fig-runtime", "runtime", caption, draw, size=(7.6, 3.0))
    table = _table(["", "results", "min", "median", "p90", "max", "total"], rows, "runtime")
    return chart + table


def _bins(n: int) -> int:
    return int(min(60, max(8, round(math.sqrt(n)))))


def numeric_outputs(results: pd.DataFrame) -> list[str]:
    """Return the numeric output columns of ``results``: not metadata, not ``p.*``, not bool."""
    out = []
    for column in results.columns:
        name = str(column)
        if name in META_COLUMNS or name.startswith("p."):
            continue
        series = results[column]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
            continue
        out.append(name)
    return out


def _heatmap_params(data: ReportData, heatmap: tuple[str, str] | None) -> tuple[str, str] | None:
    """Return the two grid parameters to draw heatmaps over, or None; check ``heatmap``."""
    if heatmap is None:
        return (data.grid_params[0], data.grid_params[1]) if len(data.grid_params) >= 2 else None
    if len(heatmap) != 2:
        raise ConfigError(f"heatmap: expected two parameter names, got {list(heatmap)!r}")
    if len(data.grid_params) < 2:
        raise ConfigError(
            f"heatmap: {list(heatmap)!r} asked for, but sweep {data.sweep!r} has "
            f"{len(data.grid_params)} grid parameter(s); heatmaps need a grid of at least two"
        )
    for name in heatmap:
        if name not in data.grid_params:
            raise ConfigError(
                f"heatmap: parameter {name!r} is not a grid parameter of sweep "
                f"{data.sweep!r}; allowed: {', '.join(data.grid_params)}"
            )
    if heatmap[0] == heatmap[1]:
        raise ConfigError(f"heatmap: the two parameters must differ, got {heatmap[0]!r} twice")
    return (heatmap[0], heatmap[1])


def _outputs(
    figs: _Figures,
    data: ReportData,
    points: pd.DataFrame,
    results: pd.DataFrame,
    pair: tuple[str, str] | None,
) -> str:
    if len(results) == 0:
        return _note("No result has been harvested yet, so there are no outputs to show.")
    columns = numeric_outputs(results)
    other = [
        str(c)
        for c in results.columns
        if str(c) not in META_COLUMNS and not str(c).startswith("p.") and str(c) not in columns
    ]
    parts: list[str] = []
    if not columns:
        parts.append(_note("The results have no numeric output column to plot."))
    if other:
        names = ", ".join(_clean(c, 40) for c in other[:20]) + (" …" if len(other) > 20 else "")
        parts.append(_note(f"Not plotted (not numeric): {names}."))

    if pair is not None:
        missing = [p for p in pair if f"p.{p}" not in results.columns]
        if missing:
            parts.append(_note(f"No heatmap: the results have no column p.{missing[0]}."))
            pair = None

    planned: list[tuple[str, str]] = []
    for column in columns:
        if pair is not None:
            planned.append(("heatmap", column))
        planned.append(("hist", column))
    shown, dropped = planned[:MAX_OUTPUT_FIGURES], planned[MAX_OUTPUT_FIGURES:]
    taken: set[str] = set()
    slugs = {c: _slug(c, taken) for c in columns}
    figures = []
    for kind, column in shown:
        if kind == "hist":
            figures.append(_output_hist(figs, results, column, slugs[column]))
        else:
            assert pair is not None
            figures.append(_output_heatmap(figs, points, results, column, slugs[column], pair))
    parts.append(f'<div class="grid">{"".join(figures)}</div>')
    if dropped:
        left = sorted({c for _, c in dropped}, key=columns.index)
        names = ", ".join(_clean(c, 40) for c in left[:20]) + (" …" if len(left) > 20 else "")
        parts.append(
            _note(
                f"Showing {len(shown)} of {len(planned)} output figures (at most "
                f"{MAX_OUTPUT_FIGURES}); left out: {len(dropped)} figures of {names}."
            )
        )
    return "".join(parts)


def _output_hist(figs: _Figures, results: pd.DataFrame, column: str, slug: str) -> str:
    raw = pd.to_numeric(results[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    values = raw[np.isfinite(raw)]
    skipped = int(len(raw) - len(values))
    caption = f"{_clean(column, 60)}: distribution over {len(values):,} rows"
    caption += f" ({skipped:,} missing or not finite left out)" if skipped else ""
    if len(values):
        caption += (
            f"; mean {_fmt_num(float(values.mean()))}, median {_fmt_num(float(np.median(values)))}"
            f", min {_fmt_num(float(values.min()))}, max {_fmt_num(float(values.max()))}"
        )
    caption += "."
    attrs = f' data-column="{_e(column)}"'
    if len(values) == 0:
        return (
            f'<figure id="output-hist-{slug}" data-figure="output-hist"{attrs}>'
            f'<p class="note">No finite value yet.</p><figcaption>{_e(caption)}</figcaption>'
            "</figure>"
        )

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        ax.hist(values, bins=_bins(len(values)), color=_BAR)
        ax.set_xlabel(_mpl_text(column))
        ax.set_ylabel("rows")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    return figs.render(
        f"output-hist-{slug}", "output-hist", caption, draw, size=(4.6, 3.0), extra_attrs=attrs
    )


def _output_heatmap(
    figs: _Figures,
    points: pd.DataFrame,
    results: pd.DataFrame,
    column: str,
    slug: str,
    pair: tuple[str, str],
) -> str:
    px, py = (f"p.{p}" for p in pair)
    source = points if px in points.columns and py in points.columns and len(points) else results
    xs = sorted({_hashable(v) for v in source[px]}, key=_sort_key)
    ys = sorted({_hashable(v) for v in source[py]}, key=_sort_key)
    frame = pd.DataFrame(
        {
            "x": results[px].map(_hashable),
            "y": results[py].map(_hashable),
            "v": pd.to_numeric(results[column], errors="coerce"),
        }
    )
    frame = frame[np.isfinite(frame["v"].to_numpy(dtype=float, na_value=np.nan))]
    xi = {v: i for i, v in enumerate(xs)}
    yi = {v: i for i, v in enumerate(ys)}
    grid = np.full((len(ys), len(xs)), np.nan)
    for (x, y), mean in frame.groupby(["x", "y"], dropna=False)["v"].mean().items():
        if x in xi and y in yi:
            grid[yi[y], xi[x]] = float(mean)
    filled = int(np.count_nonzero(np.isfinite(grid)))
    caption = (
        f"{_clean(column, 60)}: mean over {_clean(pair[0], 30)} × {_clean(pair[1], 30)} "
        f"({filled:,} of {grid.size:,} cells have values)."
    )
    attrs = f' data-column="{_e(column)}"'

    def draw(fig: Figure) -> None:
        ax = fig.add_subplot()
        ax.grid(visible=False)
        cmap = mpl.colormaps["viridis"].with_extremes(bad="#eceef1")
        masked = np.ma.masked_invalid(grid)
        image = ax.imshow(masked, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest")
        fig.colorbar(image, ax=ax, label=_mpl_text(f"mean {column}", 40))
        for values, setter in ((xs, ax.set_xticks), (ys, ax.set_yticks)):
            step = max(1, math.ceil(len(values) / 12))
            ticks = list(range(0, len(values), step))
            setter(ticks, [_mpl_text(_fmt_param(values[i]), 16) for i in ticks])
        ax.set_xlabel(_mpl_text(pair[0]))
        ax.set_ylabel(_mpl_text(pair[1]))
        if 0 < len(xs) <= _ANNOTATE_CELLS and 0 < len(ys) <= _ANNOTATE_CELLS and filled:
            lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
            mid = (lo + hi) / 2.0
            for (r, c), value in np.ndenumerate(grid):
                if math.isfinite(value):
                    colour = "black" if value > mid or hi == lo else "white"
                    ax.text(
                        c, r, f"{value:.3g}", ha="center", va="center", fontsize=7, color=colour
                    )

    if not xs or not ys:
        return _note(f"No heatmap of {column}: no parameter values.")
    return figs.render(
        f"output-heatmap-{slug}",
        "output-heatmap",
        caption,
        draw,
        size=(4.6, 3.4),
        extra_attrs=attrs,
    )


# ---------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1f2328;--muted:#5b636e;--line:#d9dde3;--bg:#fff;--soft:#f5f7fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--fg);background:var(--bg)}
header{padding:20px 32px 12px;border-bottom:1px solid var(--line);background:var(--soft)}
header h1{margin:0 0 4px;font-size:22px;word-break:break-word}
header p{margin:0;color:var(--muted)}
nav{padding:8px 32px;border-bottom:1px solid var(--line);font-size:13px}
nav a{margin-right:14px;color:#2f5fa8;text-decoration:none}
main{padding:8px 32px 40px;max-width:1240px}
section{margin-top:22px}
h2{font-size:17px;margin:0 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
table{border-collapse:collapse;margin:8px 16px 12px 0;font-size:13px;display:inline-table;
vertical-align:top}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
td:nth-child(n+2){text-align:right;font-variant-numeric:tabular-nums}
table.spec td:nth-child(2),table.reasons td:nth-child(4){text-align:left}
table.spec td:nth-child(2){max-width:760px;word-break:break-all}
th{font-weight:600;color:var(--muted);background:var(--soft)}
.reason{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:7px;
vertical-align:-1px}
.statebar{display:flex;height:14px;border-radius:3px;overflow:hidden;margin:4px 0 10px;
max-width:900px;background:var(--soft)}
.statebar span{display:block;height:100%}
figure{margin:8px 0 14px;padding:0}
figure svg{display:block;width:100%;height:auto}
figcaption{font-size:12.5px;color:var(--muted);margin-top:2px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px 24px}
.note{color:var(--muted);font-style:italic;margin:6px 0}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"

_SECTIONS = (
    ("summary", "Summary"),
    ("progress", "Progress"),
    ("throughput", "Throughput"),
    ("failures", "Failures"),
    ("runtime", "Run times"),
    ("outputs", "Outputs"),
)


def build_report(
    data: ReportData, *, heatmap: tuple[str, str] | None = None, title: str | None = None
) -> str:
    """Return one self-contained HTML document describing the sweep in ``data``.

    ``heatmap`` names the two grid parameters the output heatmaps are drawn over
    (default: the first two of ``data.grid_params``); a name that is not a grid
    parameter raises :class:`~pipeline.errors.ConfigError`.
    """
    pair = _heatmap_params(data, heatmap)
    points = _with_columns(data.points, _POINT_COLUMNS)
    attempts = _with_columns(data.attempts, _ATTEMPT_COLUMNS)
    results = _with_columns(data.results, ())
    meta = _with_columns(results, META_COLUMNS)
    unique_results = (
        meta.drop_duplicates(subset="result_name", keep="first")
        if meta["result_name"].notna().any()
        else meta.drop_duplicates(subset=["wu_name", "point_id", "attempt"], keep="first")
    )
    if len(results) and meta["result_name"].isna().any():
        # Rows without a result name cannot be told apart; keep each distinct one.
        unnamed = meta[meta["result_name"].isna()].drop_duplicates(
            subset=["wu_name", "point_id", "attempt"]
        )
        unique_results = pd.concat([unique_results[unique_results["result_name"].notna()], unnamed])

    figs = _Figures()
    bodies = {
        "summary": _summary(data, points, attempts, results, unique_results),
        "progress": _progress(figs, attempts, unique_results),
        "throughput": _throughput(figs, unique_results, data.generated_at),
        "failures": _failures(figs, points),
        "runtime": _runtime(figs, unique_results),
        "outputs": _outputs(figs, data, points, results, pair),
    }
    heading = title if title is not None else f"Sweep {data.sweep} — version {data.version}"
    subtitle = (
        f"sweep <strong>{_e(data.sweep)}</strong> · version {int(data.version)} · "
        f"generated {_e(_fmt_time(data.generated_at))}"
    )
    nav = "".join(f'<a href="#{sid}">{name}</a>' for sid, name in _SECTIONS)
    sections = "".join(
        f'<section id="{sid}"><h2>{name}</h2>{bodies[sid]}</section>' for sid, name in _SECTIONS
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="boinc-pipeline">'
        f"<title>{_e(_clean(heading, 200))}</title><style>{_CSS}</style></head>\n"
        f"<body><header><h1>{_e(_clean(heading, 200))}</h1><p>{subtitle}</p></header>"
        f"<nav>{nav}</nav><main>{sections}</main></body></html>\n"
    )


def write_report(data: ReportData, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Build the report and write it to ``path`` atomically (temporary file, then rename)."""
    document = build_report(data, **kwargs)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
