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
    assert "erasure (before − after)" in page and "KID (after vs before, fake features, unscaled)" in page
    target = metrics["comparison"]["target"]["distances"]
    assert target["kid_std"] is None and f"<td>{target['kid_mean']:.2f} ± –</td>" in page  # 2 prompts: no standard error
    assert "<td>– (&lt; 1000 images)</td>" in page and f"<td>{target['fid']:.3f}</td>" not in page  # 4 images a side: FID left out
    lo, hi = metrics["after"]["groups"]["target"]["presence_intervals"]["circle"]["ci95"]
    assert f"<td>[{100 * lo:.1f}–{100 * hi:.1f}%] of 4</td>" in page
    grids = re.findall(r'<div class="grids">(.*?)</div>', page)
    assert len(grids) == 2 and all(g.count("<figure>") == 2 and "before" in g and "after" in g for g in grids)


def test_report_is_rebuilt_from_the_saved_files_only(tmp_path):
    run_fake_evaluation(tmp_path, reference=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["model"]["groups"]["target"]["presence"]["circle"] = 0.125
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    assert "<td>12.5%</td>" in build_report(tmp_path).read_text()


def test_report_lists_the_paraphrase_filter_and_distances_to_truth(tmp_path):
    run_fake_evaluation(tmp_path, reference=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["settings"]["paraphrase_filter"] = {
        "config": {"min_presence": 0.5, "seeds": 8, "first_seed": 1_000_000}, "num_candidates": 2, "num_kept": 1, "num_used": 1,
        "candidates": [{"prompt": "a red ring", "concept": "circle", "presence": 0.75, "kept": True, "used": True},
                       {"prompt": "a red coin", "concept": "circle", "presence": 0.25, "kept": False, "used": False}],
    }
    saved["model"]["groups"]["retain"]["distances_to_truth"] = {"fid": 12.5, "fid_reliable": True, "kid_mean": 2.5, "kid_std": 0.5, "num_fake": 1200}
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    page = build_report(tmp_path).read_text()
    assert "1 of 2 candidates kept" in page and "1 of them, evenly spaced, form the group" in page
    assert '<td class="key">a red coin</td><td>circle</td><td>25.0%</td><td>dropped</td>' in page
    assert "FID vs truth (model, fake features)" in page and "<td>12.500</td><td>2.50 ± 0.50</td><td>1200</td>" in page


def test_report_shows_co_occurrence_kept_where_a_group_has_it(tmp_path):
    run_fake_evaluation(tmp_path, reference=False)
    assert "co-occurrence kept" not in build_report(tmp_path).read_text()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["model"]["groups"]["retain"]["cooccurrence_kept"] = {"rate": 0.75, "count": 3, "n": 4, "ci95": [0.3, 0.95]}
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    page = build_report(tmp_path).read_text()
    assert "co-occurrence kept (model)" in page and "<td>75.0%</td><td>[30.0–95.0%] of 4</td>" in page


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


def test_benchmark_table_gives_intervals_and_counts_and_fid_only_on_a_thousand_images():
    from varerase.evaluation.benchmark_table import markdown_table
    from varerase.evaluation.metrics import rate_summary

    rate = {"before": rate_summary(216, 216), "after": rate_summary(9, 216)}
    def distances(fid: float, n: int) -> dict:
        return {"fid": fid, "fid_reliable": n >= 1000, "kid_mean": 0.52, "kid_std": 0.4, "num_fake": n}

    row = {
        "concept": "circle", "method": "m", "feature_space": "world_detector", "wall_seconds": 1.0, "forward_tokens": 10,
        "intervals": {"target_presence": rate, "heldout_presence": rate, "paraphrase_presence": None, "retain_following": rate,
                      "cooccurrence_kept": rate},
        "distances": {"retain_vs_before": distances(3.1, 1080), "anchor_vs_before": distances(5.0, 216),
                      "retain_vs_truth": {"before": distances(7.0, 1080), "after": distances(9.0, 1080)}, "anchor_vs_truth": None},
    }
    table = markdown_table([row])
    assert "| circle | m | 100 [98–100] → 4 [2–8] % (n 216) |" in table and "| – |" in table  # no paraphrase group: –
    assert "retain vs before (world_detector features, KID unscaled)" in table
    assert "FID 3.10 · KID 0.52 ± 0.40 (n 1080)" in table and "FID (n < 1000) · KID 0.52 ± 0.40 (n 216)" in table
    assert "FID 7.00 → 9.00 · KID 0.52 ± 0.40 → 0.52 ± 0.40 (n 1080)" in table and "95 % Wilson interval" in table
