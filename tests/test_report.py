"""report.html rebuilt from saved runs (single model and before/after)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from test_metrics import run_fake_evaluation
from varerase.errors import DataError
from varerase.evaluation.report import build_report


def test_report_shows_the_saved_values_grids_and_settings(tmp_path):
    run_fake_evaluation(tmp_path, reference=False)
    page = build_report(tmp_path).read_text()
    assert "<td>100.0%</td>" in page and "<td>0.0%</td>" in page  # circle presence: target, retain
    # Two grids and the presence plot (no preservation plot: the fake detector gives no prompt following or CLIP score).
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 2 + 1
    assert "fake-original" in page and "seed_rule" in page and "sampler.cfg" in page
    assert (tmp_path / "plots" / "presence.png").stat().st_size > 1000


def test_report_of_a_before_after_run_shows_erasure_and_grids_side_by_side(tmp_path):
    metrics = run_fake_evaluation(tmp_path, reference=True)
    page = build_report(tmp_path).read_text()
    assert "erasure (before − after)" in page and "FID (after vs before)" in page
    fid = metrics["comparison"]["target"]["distances"]["fid"]
    assert f"<td>{fid:.3f}</td>" in page
    grids = re.findall(r'<div class="grids">(.*?)</div>', page)
    assert len(grids) == 2 and all(g.count("<figure>") == 2 and "before" in g and "after" in g for g in grids)


def test_report_is_rebuilt_from_the_saved_files_only(tmp_path):
    run_fake_evaluation(tmp_path, reference=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["model"]["groups"]["target"]["presence"]["circle"] = 0.125
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    assert "<td>12.5%</td>" in build_report(tmp_path).read_text()


def test_report_without_metrics_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="run an evaluation"):
        build_report(tmp_path)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    run_fake_evaluation(tmp_path, reference=True)
    report = build_report(tmp_path)
    screenshot = tmp_path / "screenshot.png"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}", "--window-size=1200,2000", report.as_uri()]
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    assert screenshot.stat().st_size > 10_000
