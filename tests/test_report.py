"""Tests of the HTML sweep report: content and escaping, and rendering in a real headless Chromium.

The Chromium test drives the browser through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3
and 4), so it needs no Python package beyond the standard library.
"""

from __future__ import annotations

import base64
import fcntl
import json
import math
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import service_missing

from pipeline import report
from pipeline.errors import ConfigError
from pipeline.report import (
    MAX_OUTPUT_FIGURES,
    META_COLUMNS,
    STATE_ORDER,
    ReportData,
    build_report,
    numeric_outputs,
    write_report,
)

HOSTILE_REASON = "<script>alert(1)</script>"
HOSTILE_COLUMN = "<img src=x onerror=alert(2)>"
T0 = 1_700_000_000.0
OMEGA = [0.02, 0.021, 0.022, 0.023, 0.024, 0.025]
H = [0.6, 0.65, 0.7, 0.75, 0.8]


def chi2_of(omega_b: float, h: float) -> float:
    """The synthetic output: a smooth bowl over the grid."""
    return round(((omega_b - 0.022) * 1000) ** 2 + ((h - 0.7) * 10) ** 2, 6)


def grid_sweep() -> ReportData:
    """A 6 × 5 grid sweep mid-run: harvested points, failures, running and queued ones.

    Each result has two output rows (``z`` = 0 and 1), so results have several rows per
    point; one point was harvested twice under the same result name (a duplicate row).
    """
    rng = np.random.default_rng(7)
    points, attempts, results = [], [], []
    pid = 0
    for h in H:
        for ob in OMEGA:
            pid += 1
            point_id = f"p{pid:03d}"
            submitted = T0 + pid * 120.0
            runtime = float(rng.gamma(4.0, 400.0))
            if pid % 10 == 3:
                state, reason = "failed", "exit status 1: segfault"
            elif pid == 7:
                state, reason = "exhausted", HOSTILE_REASON
            elif pid == 11:
                state, reason = "lost", None
            elif pid in (28, 29):
                state, reason = "running", None
            elif pid == 30:
                state, reason = "planned", None
            else:
                state, reason = "harvested", None
            points.append(
                {"point_id": point_id, "attempt": 1, "state": state, "reason": reason,
                 "p.omega_b": ob, "p.h": h}
            )  # fmt: skip
            if state == "planned":
                continue
            wu = f"bp_grid_v1_{point_id}_a1"
            outcome = {"harvested": "done", "failed": "failed", "exhausted": "failed"}.get(state)
            finished = submitted + runtime + 300.0 if outcome else math.nan
            if state == "lost":
                outcome, finished = "lost", submitted + 5000.0
            attempts.append(
                {"wu_name": wu, "point_id": point_id, "attempt": 1, "reserved_at": submitted - 5,
                 "submitted_at": submitted, "finished_at": finished, "outcome": outcome,
                 "reason": reason}
            )  # fmt: skip
            if state != "harvested":
                continue
            copies = 2 if pid == 5 else 1
            for _ in range(copies):
                for z in (0, 1):
                    results.append(
                        {"sweep": "grid", "version": 1, "point_id": point_id, "attempt": 1,
                         "wu_name": wu, "result_name": f"{wu}_r0", "hostid": 100 + pid % 4,
                         "cpu_time": runtime * 0.9, "elapsed_time": runtime,
                         "received_time": int(submitted + runtime + 200),
                         "harvested_at": submitted + runtime + 600,
                         "source_file": "out.csv", "p.omega_b": ob, "p.h": h,
                         "z": z, "chi2": chi2_of(ob, h) + z, "n_iter": 10 + pid,
                         HOSTILE_COLUMN: float(pid), "status": "ok", "converged": True}
                    )  # fmt: skip
    return ReportData(
        sweep="grid",
        version=1,
        generated_at=T0 + 40_000.0,
        spec={
            "name": "grid",
            "image": "cosmo/camb:1.5",
            "command": ["camb", "--omega_b={omega_b}", "--h={h}"],
            "parameters": {"omega_b": OMEGA, "h": H},
        },
        grid_params=["omega_b", "h"],
        points=pd.DataFrame(points),
        attempts=pd.DataFrame(attempts),
        results=pd.DataFrame(results),
    )


@pytest.fixture(scope="module")
def grid() -> tuple[ReportData, str]:
    """The grid sweep and its report, built once for the tests that only read it."""
    data = grid_sweep()
    return data, build_report(data)


def figure_ids(document: str) -> list[str]:
    return re.findall(r'<figure id="([^"]+)"', document)


def figure_html(document: str, fig_id: str) -> str:
    match = re.search(rf'<figure id="{re.escape(fig_id)}".*?</figure>', document, re.S)
    assert match, f"figure {fig_id} missing"
    return match.group(0)


def svg_texts(fragment: str) -> list[str]:
    """The text drawn in an inline SVG (matplotlib writes ``<text>`` with svg.fonttype none)."""
    return [
        re.sub(r"<[^>]+>", "", t).strip() for t in re.findall(r"<text\b.*?</text>", fragment, re.S)
    ]


def table_row(document: str, first_cell: str) -> list[str]:
    """The cells of the first table row whose first cell's text is ``first_cell``."""
    for row in re.findall(r"<tr>(.*?)</tr>", document, re.S):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


# ------------------------------------------------------------------- pure content


def test_grid_report_has_every_section_and_figure(grid: tuple[ReportData, str]) -> None:
    data, document = grid
    assert document.startswith("<!DOCTYPE html>")
    for section in ("summary", "progress", "throughput", "failures", "runtime", "outputs"):
        assert f'<section id="{section}">' in document
    ids = figure_ids(document)
    # numeric outputs: z, chi2, n_iter and the hostile-named column (bools and text are not)
    assert numeric_outputs(data.results) == ["z", "chi2", "n_iter", HOSTILE_COLUMN]
    expected_outputs = [
        "output-heatmap-z", "output-hist-z", "output-heatmap-chi2", "output-hist-chi2",
        "output-heatmap-n-iter", "output-hist-n-iter", "output-heatmap-img-src-x-onerror-alert-2",
        "output-hist-img-src-x-onerror-alert-2",
    ]  # fmt: skip
    assert ids == [
        "fig-progress",
        "fig-throughput",
        "fig-failures",
        "fig-runtime",
        *expected_outputs,
    ]
    for fig_id in ids:
        fragment = figure_html(document, fig_id)
        assert "<svg" in fragment
        assert "<figcaption>" in fragment
        assert 'data-figure="' in fragment
    assert "Not plotted (not numeric): status, converged." in document


def test_report_is_self_contained_and_escapes_user_strings(grid: tuple[ReportData, str]) -> None:
    data, document = grid
    titled = build_report(replace(data, sweep="grid<b>&", results=data.results.iloc[0:0]))
    assert "<title>Sweep grid&lt;b&gt;&amp; — version 1</title>" in titled
    assert "sweep <strong>grid&lt;b&gt;&amp;</strong>" in titled
    assert "<script" not in document.lower()
    assert "<img" not in document.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    # no resource is loaded from anywhere: only in-document references and SVG namespaces
    refs = re.findall(r'(?:href|src)="([^"]*)"', document)
    assert refs
    assert all(r.startswith(("#", "data:image/png;base64,")) for r in refs), refs
    without_namespaces = re.sub(r'xmlns(:\w+)?="[^"]*"', "", document)
    assert "http://" not in without_namespaces
    assert "https://" not in without_namespaces
    assert "default-src 'none'" in document  # the CSP that forbids scripts and remote loads
    # ids stay unique although every matplotlib figure names its parts the same way
    all_ids = re.findall(r'\bid="([^"]+)"', document)
    assert len(all_ids) == len(set(all_ids))
    for url in set(re.findall(r"url\(#([^)]+)\)", document)):
        assert f'id="{url}"' in document


def test_state_counts_totals_and_runtime_use_one_row_per_result(
    grid: tuple[ReportData, str],
) -> None:
    data, document = grid
    counts = data.points["state"].value_counts()
    for state, n in counts.items():
        assert table_row(document, str(state))[1] == f"{n:,}"
    assert table_row(document, "total")[1] == str(len(data.points))
    # order of the state table follows STATE_ORDER
    shown = re.findall(r'<span class="state">([^<]+)</span>', document)
    assert shown == [s for s in STATE_ORDER if s in counts.index]

    unique = data.results["result_name"].nunique()
    assert len(data.results) == 2 * unique + 2  # two rows per result, one result duplicated
    assert table_row(document, "results harvested")[1] == str(unique)
    assert table_row(document, "result rows")[1] == str(len(data.results))
    assert table_row(document, "CPU time")[1] == str(unique)
    assert table_row(document, "elapsed time")[1] == str(unique)
    assert table_row(document, "results received")[1] == str(unique)
    assert table_row(document, "volunteer hosts")[1] == "4"


def test_progress_counts_submitted_done_and_failed(grid: tuple[ReportData, str]) -> None:
    data, document = grid
    texts = svg_texts(figure_html(document, "fig-progress"))
    submitted = int(data.attempts["submitted_at"].notna().sum())
    done = data.results["wu_name"].nunique()
    failed = int((data.attempts["outcome"] == "failed").sum())
    assert f"submitted ({submitted})" in texts
    assert f"done ({done})" in texts
    assert f"failed ({failed})" in texts


def test_failure_reasons_table_and_chart(grid: tuple[ReportData, str]) -> None:
    data, document = grid
    failed = data.points[data.points["state"].isin(["failed", "exhausted", "lost", "bad_output"])]
    segfaults = int((failed["reason"] == "exit status 1: segfault").sum())
    assert segfaults == 3
    row = table_row(document, "exit status 1: segfault")
    assert row[1:3] == ["3", f"{100 * 3 / len(failed):.1f} %"]
    assert table_row(document, "(no reason recorded)")[1:] == ["1", "20.0 %", "lost 1"]
    assert table_row(document, "&lt;script&gt;alert(1)&lt;/script&gt;")[3] == "exhausted 1"
    chart = svg_texts(figure_html(document, "fig-failures"))
    assert "exit status 1: segfault" in chart
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in chart


def test_heatmap_shows_the_mean_of_each_cell(grid: tuple[ReportData, str]) -> None:
    data, document = grid
    fragment = figure_html(document, "output-heatmap-chi2")
    texts = svg_texts(fragment)
    harvested = data.points[data.points["state"] == "harvested"]
    # rows z=0 and z=1 hold chi2 and chi2 + 1, so each cell's mean is chi2 + 0.5
    for ob, h in zip(harvested["p.omega_b"], harvested["p.h"], strict=True):
        assert f"{chi2_of(ob, h) + 0.5:.3g}" in texts
    cells = len(OMEGA) * len(H)
    assert f"({len(harvested)} of {cells} cells have values)" in fragment
    assert "omega_b" in texts
    assert "h" in texts
    # tick labels carry the grid values, x = omega_b, y = h
    for value in [*OMEGA, *H]:
        assert f"{value:.4g}" in texts


def test_heatmap_parameters_can_be_chosen_and_are_checked(grid: tuple[ReportData, str]) -> None:
    full, document = grid
    default = figure_html(document, "output-heatmap-chi2")
    keep = [*META_COLUMNS, "p.omega_b", "p.h", "chi2"]
    data = replace(full, attempts=full.attempts.iloc[0:0], results=full.results[keep])
    swapped = figure_html(build_report(data, heatmap=("h", "omega_b")), "output-heatmap-chi2")
    assert "mean over omega_b × h" in default
    assert "mean over h × omega_b" in swapped
    with pytest.raises(ConfigError, match=r"'Omega'.*allowed: omega_b, h"):
        build_report(data, heatmap=("Omega", "h"))
    with pytest.raises(ConfigError, match="must differ"):
        build_report(data, heatmap=("h", "h"))
    not_grid = replace(data, grid_params=[])
    with pytest.raises(ConfigError, match="0 grid parameter"):
        build_report(not_grid, heatmap=("h", "omega_b"))
    ids = figure_ids(build_report(not_grid))
    assert "output-hist-chi2" in ids
    assert not any("heatmap" in i for i in ids)


def test_output_figures_are_capped_and_the_cap_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_OUTPUT_FIGURES == 12
    monkeypatch.setattr(report, "MAX_OUTPUT_FIGURES", 3)  # fewer figures to draw, same logic
    data = grid_sweep()
    keep = [*META_COLUMNS, "p.omega_b", "p.h"]
    results = data.results[keep].copy()
    for i in range(3):
        results[f"out{i}"] = np.arange(len(results), dtype=float) * (i + 1)
    document = build_report(replace(data, results=results, attempts=data.attempts.iloc[0:0]))
    outputs = [i for i in figure_ids(document) if i.startswith("output-")]
    assert outputs == ["output-heatmap-out0", "output-hist-out0", "output-heatmap-out1"]
    assert "Showing 3 of 6 output figures (at most 3)" in document
    assert "left out: 3 figures of out1, out2." in document


def test_empty_sweep_renders_and_says_what_is_missing() -> None:
    empty = ReportData(sweep="fresh", version=3, generated_at=T0, spec={"name": "fresh"})
    document = build_report(empty)
    assert figure_ids(document) == []
    for sentence in (
        "No points are recorded for this sweep yet.",
        "Nothing has been submitted yet, so there is no progress to show.",
        "No result has been received yet, so there is no throughput to show.",
        "No point has failed.",
        "No result has been harvested yet, so there are no run times to show.",
        "No result has been harvested yet, so there are no outputs to show.",
    ):
        assert sentence in document
    assert "2023-11-14 22:13:20 UTC" in document
    assert "version 3" in document

    # frames with their columns but no rows, and points planned but never submitted
    planned = grid_sweep().points.assign(state="planned", reason=None)
    columns_only = replace(
        empty,
        grid_params=["omega_b", "h"],
        points=planned,
        attempts=grid_sweep().attempts.iloc[0:0],
        results=grid_sweep().results.iloc[0:0],
    )
    document = build_report(columns_only)
    assert figure_ids(document) == []
    assert table_row(document, "planned")[1:] == [str(len(planned)), "100.0 %"]
    assert "Nothing has been submitted yet" in document


def test_submitted_but_no_result_yet() -> None:
    data = grid_sweep()
    running = replace(
        data,
        attempts=data.attempts.assign(finished_at=math.nan, outcome=None),
        results=data.results.iloc[0:0],
    )
    document = build_report(running)
    assert figure_ids(document) == ["fig-progress", "fig-failures"]
    texts = svg_texts(figure_html(document, "fig-progress"))
    assert f"submitted ({len(data.attempts)})" in texts
    assert "done (0)" in texts


def test_constant_and_non_finite_outputs() -> None:
    data = grid_sweep()
    results = data.results[["result_name", "wu_name", "point_id", "p.omega_b", "p.h"]].copy()
    results["flat"] = 1.5
    results["broken"] = np.where(np.arange(len(results)) % 2, np.inf, np.nan)
    results["half"] = np.where(np.arange(len(results)) % 2, 2.0, np.nan)
    document = build_report(replace(data, results=results, grid_params=[]))
    assert "flat: distribution over" in document
    assert "broken: distribution over 0 rows" in document
    assert "No finite value yet." in document
    half = figure_html(document, "output-hist-half")
    assert f"({len(results) - len(results) // 2:,} missing or not finite left out)" in half


def test_write_report_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    full = grid_sweep()
    data = replace(full, attempts=full.attempts.iloc[0:0], results=full.results.iloc[0:0])
    assert write_report(data, target, title="Grid run") == target
    text = target.read_text(encoding="utf-8")
    assert "<title>Grid run</title>" in text
    assert os.stat(target).st_mode & 0o777 == 0o644
    with pytest.raises(ConfigError):
        write_report(data, target, heatmap=("nope", "h"))
    assert target.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_constants_match_the_stages_that_produce_the_data() -> None:
    from pipeline.harvest import META_COLUMNS as HARVEST_META
    from pipeline.track import STATUS_ORDER

    assert tuple(STATE_ORDER) == tuple(STATUS_ORDER)
    assert tuple(META_COLUMNS) == tuple(HARVEST_META)


# -------------------------------------------------------------- headless Chromium

CHROMIUM = "/usr/bin/chromium"


class DevTools:
    """A minimal DevTools-protocol client over Chromium's ``--remote-debugging-pipe``."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        argv = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        # The browser reads commands from fd 3 and writes replies to fd 4: the shell
        # (bash: dash takes single-digit descriptors only) moves the pipe ends there and
        # executes Chromium in its place.
        # The ends are first copied above 9 so that they never sit at 3 or 4 already.
        r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        wiring = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", wiring, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(r, w),
        )
        for fd in (to_browser_r, from_browser_w, r, w):
            os.close(fd)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_event(self, method: str, after: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event.get("method") == method:
                    return event
            self.events.append(self._read_message(deadline))

    def open_page(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def load(self, url: str) -> list[str]:
        """Navigate to ``url``, wait for the load event and return the errors it logged."""
        start = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", start)
        self.evaluate("new Promise(r => requestAnimationFrame(() => r(1)))")
        errors = []
        for event in self.events[start:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "assert",
                "warning",
            ):
                errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                errors.append(f"log: {params['entry'].get('text')}")
        return errors

    def evaluate(self, expression: str) -> Any:
        reply = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(reply["exceptionDetails"])
        return reply["result"].get("value")

    def screenshot(self, path: Path, width: int = 1280) -> tuple[int, int]:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=800, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return width, height

    def close(self) -> None:
        try:
            self.session = ""
            self.call("Browser.close", timeout=5)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    """A headless Chromium with a fresh profile, driven over the DevTools pipe."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        service_missing("chromium", f"{CHROMIUM} is not installed (Debian package chromium)")
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = DevTools(profile)
    try:
        browser.open_page()
        yield browser
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


INSPECT = """
(() => {
  const figures = [...document.querySelectorAll('figure[data-figure]')].map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {id: f.id, kind: f.dataset.figure, width: box.width, height: box.height,
            marks: svg ? svg.querySelectorAll('path, text, image').length : 0,
            caption: (f.querySelector('figcaption') || {}).textContent || ''};
  });
  return {title: document.title, figures, scripts: document.scripts.length,
          images: document.images.length,
          sections: [...document.querySelectorAll('section')].map(s => s.id),
          reasons: [...document.querySelectorAll('.reason')].map(e => e.textContent),
          width: document.documentElement.scrollWidth,
          viewport: window.innerWidth};
})()
"""


def test_report_renders_in_headless_chromium(
    chromium: DevTools, grid: tuple[ReportData, str], tmp_path: Path
) -> None:
    # The detector first has to see errors on a page that has them.
    control = tmp_path / "control.html"
    control.write_text(
        "<!DOCTYPE html><html><body><p>control</p>"
        "<script>console.error('planted error'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    planted = chromium.load(control.as_uri())
    assert any("planted error" in e for e in planted)
    assert any(e.startswith("exception:") for e in planted)

    report = tmp_path / "report.html"
    report.write_text(grid[1], encoding="utf-8")
    expected = figure_ids(grid[1])
    assert chromium.load(report.as_uri()) == []
    page = chromium.evaluate(INSPECT)

    assert page["title"] == "Sweep grid — version 1"
    assert page["sections"] == [
        "summary",
        "progress",
        "throughput",
        "failures",
        "runtime",
        "outputs",
    ]
    assert [f["id"] for f in page["figures"]] == expected
    for figure in page["figures"]:
        assert figure["width"] > 200, figure
        assert figure["height"] > 100, figure
        assert figure["marks"] > 10, figure
        assert figure["caption"], figure
    # the hostile strings are text in the browser, not markup
    assert page["scripts"] == 0
    assert page["images"] == 0
    assert "<script>alert(1)</script>" in page["reasons"]
    assert page["width"] <= page["viewport"]  # nothing overflows sideways

    shot = tmp_path / "report.png"
    width, height = chromium.screenshot(shot)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == width
    assert int.from_bytes(png[20:24], "big") == height > 1500

    empty = ReportData(sweep="fresh", version=1, generated_at=T0)
    path = write_report(empty, tmp_path / "empty.html")
    assert chromium.load(path.as_uri()) == []
    page = chromium.evaluate(INSPECT)
    assert page["figures"] == []
    assert len(page["sections"]) == 6
