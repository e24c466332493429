"""The recommendation: which evaluated candidate for which goal, and the note when a baseline dominates the front."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mpsearch.report import (
    RunSummary,
    build_document,
    candidates_frame,
    recommend,
    recommendation_lines,
    render_html,
    render_markdown,
    summary_recommendation,
)
from mpsearch.report.document import Heading

REPO = Path(__file__).resolve().parents[2]


def _int8(s: RunSummary):
    return next(ev for ev in s.candidates if ev.label == "int8")


def dominated_by_int8(s: RunSummary) -> RunSummary:
    """Uniform INT8 faster (1.0 ms) and more accurate (91.3%) than every Pareto candidate, as on VNNI hosts."""
    ev = _int8(s)
    ev.measured_latency_ms, ev.accuracy = 1.0, 0.913
    return s


def _goal(rec, goal: str) -> str:
    return str(rec.row(goal)["label"])


def test_goals_on_the_synthetic_run(summary):
    rec = recommend(candidates_frame(summary))
    assert rec is not None and rec.reference == "FP32" and rec.latency == "measured"
    assert rec.reference_accuracy_pct == pytest.approx(91.5)
    # Within 1 point of FP32 (91.5%): fp32 4.0 ms, int8 2.0, pareto-0 2.2 and pareto-1 (exactly 1 point) 1.6.
    assert _goal(rec, "fastest within 1 point of FP32") == "pareto-1"
    assert rec.table.iloc[rec.headline]["goal"] == "fastest within 1 point of FP32"
    assert _goal(rec, "fastest within 0.5 points of FP32") == "int8"  # 2.0 ms beats pareto-0's 2.2
    assert _goal(rec, "fastest within 2 points of FP32") == "pareto-1"  # pareto-3 is 2.5 points down
    assert _goal(rec, "smallest within 0.5 points of FP32") == "int8"  # 8000 B against pareto-0's 9000
    assert _goal(rec, "smallest within 1 point of FP32") == "pareto-1"
    assert _goal(rec, "most accurate") == "fp32"
    row = rec.row("fastest within 1 point of FP32")
    assert row["latency_ms"] == pytest.approx(1.6) and row["accuracy_pct"] == pytest.approx(90.5)
    assert row["acc_drop_pts"] == pytest.approx(1.0) and row["speedup_vs_fp32"] == pytest.approx(2.5)
    assert rec.dominating == [] and rec.front_size == 4
    with pytest.raises(Exception, match="no recommendation goal"):
        rec.row("cheapest")


def test_picks_follow_the_numbers_not_the_labels(summary):
    """Make pareto-2 accurate: it becomes the fastest pick at every tolerance."""
    next(ev for ev in summary.candidates if ev.label == "pareto-2").accuracy = 0.914
    rec = recommend(candidates_frame(summary))
    for goal in ("fastest within 0.5 points of FP32", "fastest within 1 point of FP32",
                 "smallest within 0.5 points of FP32"):
        assert _goal(rec, goal) == "pareto-2", goal


def test_a_goal_nothing_meets_is_empty_not_invented(summary):
    for ev in summary.candidates:
        if ev.label != "fp32":
            ev.accuracy = 0.80  # 11.5 points below FP32
    rec = recommend(candidates_frame(summary), fastest_within=(1.0,), smallest_within=())
    assert _goal(rec, "fastest within 1 point of FP32") == "fp32"  # FP32 itself is within 0 points
    for ev in summary.candidates:
        ev.accuracy = None if ev.label == "fp32" else ev.accuracy
    rec = recommend(candidates_frame(summary), fastest_within=(1.0,), smallest_within=())
    # No FP32 accuracy: tolerances are measured from the most accurate candidate instead.
    assert rec.reference == "the most accurate candidate" and rec.reference_accuracy_pct == pytest.approx(80.0)


def test_run_budget_is_one_more_goal(summary):
    summary.config["budget"] = {"latency_ms": 1.7, "weight_kib": None}
    rec = summary_recommendation(summary)
    row = rec.table.iloc[-1]
    assert row["goal"] == "most accurate within the run's budget (≤ 1.7 ms)"
    assert row["label"] == "pareto-1"  # 90.5% at 1.6 ms; pareto-3 (1.7 ms) is less accurate


def test_predicted_latency_when_nothing_was_measured(predicted_only):
    rec = recommend(candidates_frame(predicted_only))
    assert rec.latency == "predicted"
    # Predicted: pareto-1 1.5 ms, pareto-0 2.0, int8 2.1, fp32 5.0.
    assert _goal(rec, "fastest within 1 point of FP32") == "pareto-1"
    assert _goal(rec, "fastest within 0.5 points of FP32") == "pareto-0"
    assert "predicted latency (ms)" in render_markdown(predicted_only)


def test_no_accuracy_no_recommendation(summary):
    for ev in summary.candidates:
        ev.accuracy = None
    assert recommend(candidates_frame(summary)) is None
    assert "there is nothing to recommend" in render_markdown(summary)


def test_report_opens_with_the_recommendation(summary, _tiny_png):
    blocks = build_document(summary, figures=[])
    sections = [b.text for b in blocks if isinstance(b, Heading) and b.level == 2]
    assert sections[0] == "Recommendation"
    md = render_markdown(summary)
    first = md.split("## Recommendation\n", 1)[1].split("\n## ", 1)[0]
    assert ("Recommended: **pareto-1** (1.600 ms, 90.50% top-1, 5.9 KiB of weights, 2.50× FP32's speed), "
            "the fastest within 1 point of FP32 (1.00 points below FP32).") in first
    assert "| fastest within 0.5 points of FP32 | uniform INT8 | W8A8x4 | 91.10 | +0.40 | 2.000 |" in first
    assert "dominates the searched front" not in md
    page = render_html(summary, {})
    assert re.search(r'<nav aria-label="sections"><a href="#([^"]+)">Recommendation</a>', page)
    assert "Recommended: <strong>pareto-1</strong>" in page


def test_a_dominating_baseline_is_said_plainly_and_recommended(summary):
    s = dominated_by_int8(summary)
    rec = summary_recommendation(s)
    assert rec.dominating == ["int8"]
    assert _goal(rec, "fastest within 1 point of FP32") == "int8"
    assert rec.table.iloc[rec.headline]["label"] == "int8"
    md = render_markdown(s)
    section = md.split("## Recommendation\n", 1)[1].split("\n## ", 1)[0]
    assert "Recommended: **uniform INT8** (1.000 ms, 91.30% top-1" in section
    assert ("**Uniform INT8 dominates the searched front**: it is at least as accurate and at least as fast "
            "(measured latency) as every one of the 4 Pareto candidates evaluated") in section
    # pareto-2 has 3.9 KiB of weights, INT8 7.8 KiB: the note says what the front still offers
    assert ("Deploy uniform INT8 unless weight memory matters more: the smallest Pareto candidate has 3.9 KiB of "
            "weights against its 7.8 KiB.") in section
    _int8(s).weight_bytes = 3000  # INT8 now also the smallest
    assert "Deploy uniform INT8, which is no larger in weights either." in render_markdown(s)
    page = render_html(s, {})
    assert "<strong>Uniform INT8 dominates the searched front</strong>" in page
    lines = recommendation_lines(s)
    assert any(line.startswith("Uniform INT8 dominates the searched front: ") for line in lines)


def test_equal_on_both_axes_is_not_domination(summary):
    """Domination needs at least as good on both axes against every Pareto candidate, strictly on one."""
    ev = _int8(summary)
    ev.measured_latency_ms, ev.accuracy = 1.25, 0.88  # exactly pareto-2 (1.25 ms, 88%): a tie, not domination
    assert summary_recommendation(summary).dominating == []
    ev.accuracy = 0.912  # as fast as pareto-2 and more accurate; as accurate as pareto-0 (91.2%) and faster
    assert summary_recommendation(summary).dominating == ["int8"]
    ev.accuracy = 0.911  # pareto-0 is now more accurate than INT8
    assert summary_recommendation(summary).dominating == []


def test_unmeasured_pareto_candidates_are_not_counted(summary):
    s = dominated_by_int8(summary)
    s.candidates.append(type(s.candidates[0])(
        "pareto-9", s.candidates[0].candidate, "pareto", 0.3, 0.5, None, None, 1000, 0.95, 40))
    rec = summary_recommendation(s)
    assert rec.front_size == 4 and rec.dominating == ["int8"]


def test_console_summary_table(summary):
    lines = recommendation_lines(summary)
    assert lines[0].split() == ["candidate", "bits", "top-1", "%", "ms", "KiB", "speedup"]
    body = lines[2:7]
    labels = [line.split("  ")[0].strip() for line in body]
    # baselines, then the measured front (pareto-3 is dominated once measured), by latency
    assert labels == ["FP32", "uniform INT8", "pareto-2", "pareto-1", "pareto-0"]
    assert "90.50" in body[3] and "1.600" in body[3] and "2.50×" in body[3]
    assert lines[7].startswith("Recommended: pareto-1 (1.600 ms, 90.50% top-1")
    assert lines[8].startswith("The measured front spans 3.20 points of accuracy") and len(lines) == 9
    assert not any("**" in line for line in lines)


def test_cli_ends_with_the_summary_and_recommendation(tmp_path: Path) -> None:
    """``mpsearch`` logs the table and the recommendation once the run is done (the run itself is faked)."""
    script = f"""
import sys
from pathlib import Path
import mpsearch.pipeline as pipeline
from tests.report.conftest import make_summary
from tests.report.test_report_recommendation import dominated_by_int8

def fake_run(cfg):
    return pipeline.RunOutcome(Path("{tmp_path}"), dominated_by_int8(make_summary(Path("{tmp_path}"))), None, {{}})

pipeline.run = fake_run
sys.argv = ["mpsearch", "results_dir={tmp_path / 'results'}", "progress=false"]
from mpsearch.cli import main
main()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"^uniform INT8\s+W8A8x4\s+91\.30\s+1\.000\s+7\.8\s+4\.00×$", out, re.M), out[-3000:]
    assert "Recommended: uniform INT8 (1.000 ms, 91.30% top-1" in out
    assert "Uniform INT8 dominates the searched front" in out


def test_the_pareto_section_says_it_is_dominated(summary):
    md = render_markdown(dominated_by_int8(summary))
    section = md.split("## Pareto front\n", 1)[1].split("\n## ", 1)[0]
    assert section.lstrip().startswith("**Every Pareto candidate below is dominated by uniform INT8** on accuracy and "
                              "measured latency (see *Recommendation*).")


def test_the_span_of_the_measured_front(summary):
    rec = summary_recommendation(summary)
    # pareto-3 is dominated once measured; the front is pareto-2 (88%, 1.25 ms) .. pareto-0 (91.2%, 2.2 ms).
    assert rec.front_accuracy_pct == pytest.approx((88.0, 91.2))
    assert rec.front_latency_ms == pytest.approx((1.25, 2.2))
    assert ("The measured front spans 3.20 points of accuracy (88.00–91.20%), 1.8× in latency "
            "(1.250–2.200 ms) and 2.2× in weight memory (3.9–8.8 KiB).") in render_markdown(summary)
    assert "On accuracy and latency alone" not in render_markdown(summary)  # the same front without memory
    for ev in summary.candidates:  # the slower, the more accurate, by a tenth of a point each
        ev.accuracy = {"pareto-0": 0.913, "pareto-1": 0.912, "pareto-2": 0.911}.get(ev.label, ev.accuracy)
    assert "bits barely matter for accuracy here" in render_markdown(summary)


def test_a_front_wider_for_weight_memory_says_what_it_is_on_accuracy_and_latency(summary):
    """A candidate slower and less accurate than another, but with smaller weights, is on the front only
    for its weights: the report gives the span on accuracy and latency alone too."""
    small = next(ev for ev in summary.candidates if ev.label == "pareto-2")  # 88%, the smallest weights
    small.measured_latency_ms = 2.3  # now slower than pareto-0 (91.2%, 2.2 ms)
    rec = summary_recommendation(summary)
    assert rec.front_accuracy_pct == pytest.approx((88.0, 91.2))
    assert rec.front_2d_accuracy_pct == pytest.approx((90.5, 91.2))
    assert rec.front_2d_latency_ms == pytest.approx((1.6, 2.2))
    assert ("On accuracy and latency alone it spans 0.70 points and 1.4× (1.600–2.200 ms): the other candidates "
            "are on the front only for their smaller weights.") in render_markdown(summary)


def test_latencies_within_two_percent_tie(summary):
    """A 0.8% latency edge does not buy a less accurate pick, and does not save the front from domination."""
    next(ev for ev in summary.candidates if ev.label == "pareto-2").accuracy = 0.906  # 0.9 points down, 1.25 ms
    ev = _int8(summary)
    ev.measured_latency_ms = 1.26  # 0.8% slower than pareto-2, 0.5 points more accurate
    rec = summary_recommendation(summary)
    assert _goal(rec, "fastest within 1 point of FP32") == "int8"
    assert rec.dominating == []  # pareto-0 (91.2%) is more accurate than INT8 (91.1%)
    ev.accuracy = 0.913
    assert summary_recommendation(summary).dominating == ["int8"]
    ev.measured_latency_ms = 1.30  # 4% slower than pareto-2: no longer a tie
    rec = summary_recommendation(summary)
    assert rec.dominating == [] and _goal(rec, "fastest within 1 point of FP32") == "pareto-2"


def test_a_front_of_one_point_is_said_so(summary):
    """When one Pareto candidate is both the most accurate and the fastest, the front is that point, not a
    "span" of zero points and 1.0x."""
    best = next(ev for ev in summary.candidates if ev.label == "pareto-0")
    best.accuracy, best.measured_latency_ms, best.weight_bytes = 0.95, 0.5, 1
    rec = summary_recommendation(summary)
    assert rec.front_accuracy_pct == pytest.approx((95.0, 95.0)) and rec.front_latency_ms == pytest.approx((0.5, 0.5))
    md = render_markdown(summary)
    assert ("The measured front is a single point (95.00%, 0.500 ms): the most accurate Pareto candidate evaluated "
            "is also the fastest.") in md and "front spans" not in md
