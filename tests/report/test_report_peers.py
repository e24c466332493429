"""The report's Peers section and the console's line on them: the pick's time against the fastest peer
the run timed, every peer a row (one that could not run says why), nothing invented where none ran."""

from __future__ import annotations

import pytest

from mpsearch.report import ReportError, summary_from_dict, summary_to_dict
from mpsearch.report.console import recommendation_lines
from mpsearch.report.document import Heading, Paragraph, Table, build_document, peers_sentence
from mpsearch.report.markdown import render_markdown
from tests.report.conftest import make_peers


def _section(summary) -> list:
    doc = build_document(summary, figures=[])
    start = doc.index(Heading("Peers"))
    end = next(i for i in range(start + 1, len(doc)) if isinstance(doc[i], Heading))
    return doc[start + 1:end]


def test_the_section_rates_every_peer_and_the_pick_against_the_fastest_peer(summary) -> None:
    summary.peers = make_peers()
    blocks = _section(summary)
    assert blocks[0] == Paragraph(
        "The pick, **pareto-1** (1.200 ms at batch 1, 1 thread like the peers), takes **0.50×** the time of the "
        "fastest peer on this machine, ONNX Runtime FP32 (2.400 ms): faster than what a user would run instead.")
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.header == ["method", "top-1 %", "latency (ms)", "÷ fastest peer"]
    assert table.rows == [
        ["PyTorch FP32 (eager)", "91.50", "6.000", "2.50"],
        ["ONNX Runtime FP32", "91.50", "2.400", "1.00"],
        ["ONNX Runtime INT8 static (QDQ, per-channel)", "–", "–", "not run: ValueError: no calibration"],
        ["**mpsearch pick** (pareto-1)", "90.50", "1.200", "0.50"]]
    lines = recommendation_lines(summary)
    assert lines[-1] == ("The pick, pareto-1 (1.200 ms at batch 1, 1 thread like the peers), takes 0.50× the time "
                         "of the fastest peer on this machine, ONNX Runtime FP32 (2.400 ms): faster than what a user "
                         "would run instead.")
    md = render_markdown(summary, figures=[])
    assert "## Peers" in md and "| **mpsearch pick** (pareto-1) | 90.50 | 1.200 | 0.50 |" in md


def test_a_slower_pick_is_said_slower(summary) -> None:
    summary.peers = make_peers() | {"pick_ms": 3.6}
    assert "takes **1.50×** the time of the fastest peer" in peers_sentence(summary.peers)
    assert peers_sentence(summary.peers).endswith("slower than what a user would run instead.")


def test_no_peers_no_pick_or_skipped_peers_are_said_so(summary) -> None:
    assert summary.peers is None and peers_sentence(None) is None
    assert _section(summary) == [Paragraph(
        "No peers were timed in this run (`peers=false`, or latencies not measured on a device).")]
    assert not any("peer" in line for line in recommendation_lines(summary))
    summary.peers = make_peers() | {"pick": None, "pick_ms": None}
    assert peers_sentence(summary.peers).startswith("No candidate is within the accuracy band of FP32, so no pick "
                                                    "was timed; the fastest peer is ONNX Runtime FP32 (2.400 ms)")
    assert _section(summary)[-1].rows[-1][0] == "ONNX Runtime INT8 static (QDQ, per-channel)"
    summary.peers = {"rows": [], "skipped": "profile 'rpi4' runs its code on another device", "pick": None}
    assert _section(summary) == [Paragraph(
        "No peer runtime was timed: profile 'rpi4' runs its code on another device.")]


def test_a_malformed_stored_peers_field_is_one_error(summary, tmp_path) -> None:
    summary.peers = make_peers()
    data = summary_to_dict(summary)
    assert summary_from_dict(data, tmp_path).peers == make_peers()
    data["peers"] = {"rows": [{"latency_ms": 1.0}]}
    with pytest.raises(ReportError, match="malformed field.*peers must be an object with a list of rows"):
        summary_from_dict(data, tmp_path)
