"""``python -m benchmarks models``: its configs, its packaged data and its report (no tuning here). The
pretrained models come from the ``bench`` extra; without it the data tests are skipped with the reason."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import models as bench
from mpsearch.config import RunConfig, validate

ROOT = Path(__file__).resolve().parent.parent


def _args(tmp_path: Path, quick: bool) -> argparse.Namespace:
    return argparse.Namespace(quick=quick, threads=2, cache_dir=tmp_path / "cache", trials=None, calib_samples=None,
                              test_samples=None, search_trials=None, models=",".join(bench.CASES))


def _need(case: bench.ModelCase) -> None:
    missing = bench.missing_packages(case)
    if missing:
        pytest.skip(f"{case.key} needs {', '.join(missing)} (pip install -e '.[bench]')")


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("key", list(bench.CASES))
def test_every_case_is_a_valid_run_config(tmp_path: Path, key: str, quick: bool) -> None:
    cfg = bench.run_config(bench.CASES[key], _args(tmp_path, quick), tmp_path)
    assert validate(RunConfig.from_dict(cfg.to_dict())) is not None  # round-trips, and passes validation
    # the quick mode never tunes; the real one measures on this host at a small, fixed budget
    assert (cfg.hw_profile.cost == "estimated") is quick and cfg.hw_profile.name == "host_cpu"
    assert cfg.search.w_bits == [4, 8, 32] and cfg.search.a_bits == [8, 32] and cfg.search.proxy_validation == 0
    assert cfg.model.factory.startswith("benchmarks.models:") and cfg.data.factory.startswith("benchmarks.models:")
    assert len(cfg.model.input_specs()) == len(bench.CASES[key].inputs)


def test_report_says_what_the_accuracy_column_is() -> None:
    row = {"label": "fp32", "kind": "baseline", "bits": "W32A32x2", "accuracy": 1.0, "latency_ms": 2.0,
           "latency_std_ms": 0.1, "weight_kib": 10.0, "fp32_agreement": 1.0}
    common = {"layers": 2, "data": "d", "calib_samples": 4, "test_samples": 8, "latency_source": "measured",
              "device": "cpu", "trials_per_kernel": 4, "sensitivity": "fisher", "search_trials": 10,
              "stage_s": {"load": 1.0, "hardware cost": 2.0}, "pipeline_wall_s": 3.0, "kernels_tuned": 5,
              "kernels_measured": 5, "models_compiled": 2}
    text = bench.render({
        "cnn": {**common, "model": "CNN", "labels": "fp32_top1", "rows": [row, {**row, "label": "int8", "latency_ms": 1.0}]},
        "enc": {**common, "model": "Encoder", "labels": "true", "metric": "topic top-1 %", "rows": [row]},
        "img": {**common, "model": "Lite", "labels": "true", "metric": "ImageNet top-1 %",
                "label_note": "Labels are real: ImageNet classes.", "rows": [row]},
        "gone": {"skipped": "not installed: x"},
    }, quick=False)
    assert "top-1 agreement with FP32 %" in text and "not ImageNet accuracy" in text
    assert "topic top-1 %" in text and "agreement with FP32 %" in text
    assert "ImageNet top-1 %" in text and "Labels are real: ImageNet classes." in text
    assert "| int8 | W32A32x2 | 100.0 | 1.00 ± 0.10 | 2.00 |" in text  # speedup over FP32 in its own column
    assert "hardware cost 2 s" in text and "Kernels tuned: 5" in text and "Skipped: not installed: x" in text


def test_docstring_sentences_are_real_labelled_and_split() -> None:
    case = bench.CASES["minilm_l6"]
    _need(case)
    calib, test = bench.docstring_split("calib", None), bench.docstring_split("test", 24)
    assert len(test) == 24 and {int(test[i][1]) for i in range(len(bench.TOPICS))} == set(range(len(bench.TOPICS)))
    (ids, mask), y = calib[0]
    assert ids.shape == mask.shape == (bench.SEQ,) and ids.dtype == mask.dtype == torch.int64 and y.ndim == 0
    sentences = bench.docstring_sentences()
    for c, t in sentences.values():
        assert c and t and not set(c) & set(t)  # no sentence in both splits
    model = bench.minilm_topics()
    with torch.no_grad():
        logits = model(*bench.tokenize(["Return the number of items in the queue."]))
    assert logits.shape == (1, len(bench.TOPICS))


def test_photo_views_come_from_packaged_photos() -> None:
    case = bench.CASES["efficientnet_lite0"]
    _need(case)
    assert not set(bench.CALIB_PHOTOS) & set(bench.TEST_PHOTOS)
    views = bench.photo_views(bench.TEST_PHOTOS[0])
    assert views.shape == (bench.VIEWS_PER_PHOTO, 3, bench.IMAGE, bench.IMAGE)
    assert views.std() > 0.1 and not torch.equal(views[0], views[1])  # real content; the mirror differs
    with torch.no_grad():
        assert bench.efficientnet_lite0()(views[:2]).shape == (2, 1000)


def test_the_efficientnet_test_split_is_labelled_imagenet_photos_apart_from_calibration() -> None:
    case = bench.CASES["efficientnet_lite0"]
    _need(case)
    assert case.labels == "true" and case.data_factory == "benchmarks.models:imagenet_split"
    photos = bench.imagenet_photos()
    assert len(photos) == 20 and not set(photos) & set(bench.CALIB_PHOTOS)
    classes = [bench.imagenet_class(p) for p in photos]
    assert all(0 <= c < 1000 for c in classes) and bench.imagenet_class("foolbox:imagenet_07_609.jpg") == 609
    test = bench.imagenet_split("test", 40)
    x, y = test.tensors
    assert x.shape == (40, 3, bench.IMAGE, bench.IMAGE) and y.tolist() == classes + classes  # round-robin
    assert len(bench.imagenet_split("test", None)) == bench.VIEWS_PER_PHOTO * 20
    calib = bench.imagenet_split("calib", 8).tensors[0]
    assert torch.equal(calib, bench.photo_split("calib", 8).tensors[0])  # the unlabelled photos calibrate
    with torch.no_grad():  # real labels: the pretrained model gets most of the centre crops right
        first = bench.efficientnet_lite0()(x[:20]).argmax(-1)
    assert (first == y[:20]).float().mean() >= 0.7


def test_the_wider_photo_split_is_every_other_packaged_image_in_repeatable_random_crops() -> None:
    _need(bench.CASES["efficientnet_lite0"])
    assert not set(bench.CALIB_PHOTOS) & set(bench.WIDE_TEST_PHOTOS)
    assert set(bench.TEST_PHOTOS) < set(bench.WIDE_TEST_PHOTOS)
    for ref in bench.WIDE_TEST_PHOTOS:  # every source loads as (h, w, 3) uint8: grey, binary, RGBA, matplotlib's
        img = bench._photo(ref)
        assert img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8 and img.max() > img.min(), ref
    a, b = bench.random_views("skimage:clock", 6, seed=3), bench.random_views("skimage:clock", 6, seed=3)
    assert a.shape == (6, 3, bench.IMAGE, bench.IMAGE) and torch.equal(a, b)  # the same seed, the same crops
    assert not torch.equal(a, bench.random_views("skimage:clock", 6, seed=4))
    assert len({v.sum().item() for v in a}) == 6  # six different crops
    # normalised as the model expects, in the range of the grid views of the same preprocessing
    assert -1.01 <= float(a.min()) and float(a.max()) <= 1.01


def test_photo_band_table_names_the_band_and_the_views() -> None:
    from benchmarks import photo_band

    rows = [{"candidate": "top-0 fp32", "fp32_layers": 0, "agreement": 0.9733, "wrong_per_photo": [1, 3]},
            {"candidate": "top-3 fp32", "fp32_layers": 3, "agreement": 0.9933, "wrong_per_photo": [0, 1]}]
    split = {"photos": ["a:x", "b:y"], "views_per_photo": 75, "views": 150, "median_fp32_top1_prob": 0.31,
             "one_view_points": 100 / 150, "rows": rows, "fewest_fp32_layers_in_band": 3}
    text = photo_band.render({"model": "M", "layers": 50, "proxy": "delta_kl", "splits": {"s": split}})
    assert "150 views of 2 photos (75 each)" in text and "One view = 0.67 points" in text
    assert "within 1 point of FP32: **3**" in text and "| top-3 fp32 | 3 | 99.33 | 0 1 |" in text
    # a labelled split: the band is top-1 within 1 point of FP32's, whatever the agreement
    labelled = {**split, "fp32_accuracy": 0.8250, "fewest_fp32_layers_in_band": 0,
                "rows": [{**rows[0], "accuracy": 0.8533}, {**rows[1], "accuracy": 0.8150}]}
    assert [photo_band.in_band(r, labelled) for r in labelled["rows"]] == [True, True]
    assert not photo_band.in_band({**rows[1], "accuracy": 0.8149}, labelled)
    assert [photo_band.in_band(r, split) for r in rows] == [False, True]
    text = photo_band.render({"model": "M", "layers": 50, "proxy": "delta_kl", "splits": {"s": labelled}})
    assert "FP32 ImageNet top-1 82.50%" in text and "| top-0 fp32 | 0 | 97.33 | 85.33 | 1 3 |" in text

@pytest.mark.slow
def test_quick_run_writes_both_tables(tmp_path: Path) -> None:
    for case in bench.CASES.values():
        _need(case)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "models", "--quick", "--threads", "2", "--cache-dir",
                           str(tmp_path / "cache"), "--out", str(tmp_path)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "models.md").read_text()
    assert "## EfficientNet-Lite0 (ImageNet)" in text and "## all-MiniLM-L6-v2" in text and "not a result" in text
