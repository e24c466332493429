"""Real TVM: transformer encoders (LayerNorm, GELU, softmax attention, linear layers on token sequences) and
the depthwise CNN lower, build (untuned LLVM) and agree with the PyTorch fake-quant simulation."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.errors import LoweringError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import quantize_
from mpsearch.quant.prepare import prepare_model
from mpsearch.testing import synthetic_split
from tests.sensitivity.other_models import DepthwiseSeparableCNN, EncoderBlock, TinyTransformer, TinyViT

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from mpsearch.hardware.lowering import lower  # noqa: E402
from mpsearch.hardware.memory_plan import plan_activation_memory  # noqa: E402

PAIRS = [(8, 8), (4, 8), (32, 32)]  # W8A8, W4A8, fp32


def _prepared(model: nn.Module, seed: int = 0):
    torch.manual_seed(seed)
    prepared = prepare_model(model.eval(), (1, 1, 8, 8))
    x = synthetic_split("calib", 64).tensors[0]
    return prepared, calibrate(prepared.graph_module, prepared.layer_names, [(x[:32], None), (x[32:], None)])


def _mixed(layers: list[str]) -> Candidate:
    return Candidate({n: PAIRS[i % len(PAIRS)] for i, n in enumerate(layers)})


def _build_and_compare(prepared, ranges, cand: Candidate, batch: int = 8):
    """Lower, build untuned for LLVM, run; compare with the fake-quant model as the CNN tests do."""
    x = synthetic_split("test", batch).tensors[0]
    lowered = lower(prepared, cand, ranges, batch=batch)
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in [x.numpy(), *lowered.params]]).numpy()
    with torch.no_grad():
        ref = quantize_(prepared.copy_module(), cand, ranges)(x).numpy()
        fp32 = prepared.graph_module(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    return lowered, ref, fp32


def _relax_ops(lowered) -> set[str]:
    return set(re.findall(r"R\.((?:nn\.)?[a-z_]+)\(", lowered.mod["main"].script()))


def _functions(lowered) -> set[str]:
    return {gv.name_hint for gv, _ in lowered.mod.functions_items()}


@pytest.fixture(scope="module")
def encoder():
    return _prepared(TinyTransformer(), seed=0)


def test_encoder_fp32_matches_pytorch(encoder) -> None:
    prepared, ranges = encoder
    lowered, ref, fp32 = _build_and_compare(prepared, ranges, Candidate.uniform(prepared.layer_names, 32, 32))
    np.testing.assert_allclose(ref, fp32, rtol=1e-5, atol=1e-6)  # fp32 candidate = the float model
    # the non-layer ops are Relax ops TVM legalizes and fuses (fp32), not layer kernels; GELU and softmax
    # are the vectorizable fast versions (mpsearch/hardware/fast_math.py), which still match PyTorch above
    assert {"nn.layer_norm", "matmul", "permute_dims", "mean"} <= _relax_ops(lowered)
    assert not {"nn.gelu", "nn.softmax", "exp", "erf"} & _relax_ops(lowered)
    assert {"fast_gelu", "fast_softmax"} <= _functions(lowered)


def test_encoder_mixed_candidate_runs_integer_kernels_on_token_rows(encoder) -> None:
    prepared, ranges = encoder
    cand = _mixed(prepared.layer_names)
    lowered, ref, fp32 = _build_and_compare(prepared, ranges, cand, batch=8)
    assert np.abs(ref - fp32).max() > 1e-3  # the candidate really quantizes: the comparison is not vacuous
    specs = lowered.kernels
    # (B, T, D) linear inputs run the 2-D kernels on B*T = 8*8 rows; the head sees the token mean
    assert specs["block.q"].x_shape == (64, 16) and specs["block.fc2"].x_shape == (64, 32)
    assert specs["head"].x_shape == (8, 16)
    assert {n: s.integer for n, s in specs.items()} == {n: cand[n][0] < 32 for n in prepared.layer_names}
    assert specs["block.v"].packed  # W8A8 on 16x16: the tensorizable int8 dot layout
    # residual adds with the layer's shape fuse into the kernel; the broadcast positional add does not
    assert {n: s.epilogue for n, s in specs.items() if s.epilogue} == {"block.proj": ("add",),
                                                                      "block.fc2": ("add",)}


def test_vit_style_encoder_with_sdpa_class_token_and_tanh_gelu() -> None:
    prepared, ranges = _prepared(TinyViT(), seed=1)
    assert prepared.layer_names[:3] == ["embed", "blocks.0.qkv", "blocks.0.proj"]
    lowered, ref, fp32 = _build_and_compare(prepared, ranges, _mixed(prepared.layer_names), batch=4)
    assert np.abs(ref - fp32).max() > 1e-3
    # TVM's importer lowers every float op (the class-token select included); tanh-GELU runs the fast tanh
    assert {"concat", "broadcast_to", "nn.layer_norm"} <= _relax_ops(lowered)
    assert "fast_gelu_tanh" in _functions(lowered) and "nn.gelu_tanh" not in _relax_ops(lowered)
    assert lowered.kernels["blocks.0.qkv"].x_shape == (4 * 9, 16)  # class token + 8 columns



class MaskedAttention(nn.Module):
    """Single-head attention over the 8 image rows three ways: causal, an additive float bias and a
    boolean keep-mask (both buffers), through ``F.scaled_dot_product_attention``; q/k/v by slicing."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.head = nn.Linear(8, 3)
        self.register_buffer("bias", torch.randn(8, 8))
        self.register_buffer("keep", (torch.rand(8, 8) > 0.4) | torch.eye(8, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.qkv(x[:, 0]).unsqueeze(1)  # (batch, 1 head, 8 tokens, 24)
        q, k, v = h[..., :8], h[..., 8:16], h[..., 16:]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, scale=0.5)
        c = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)
        return self.head((a + b - c).mean(2)[:, 0])


def test_attention_masks_and_scale_match_pytorch() -> None:
    prepared, ranges = _prepared(MaskedAttention(), seed=3)
    _build_and_compare(prepared, ranges, Candidate({"qkv": (8, 8), "head": (32, 32)}), batch=4)

def test_depthwise_cnn_lowers_and_matches_simulation() -> None:
    prepared, ranges = _prepared(DepthwiseSeparableCNN(), seed=2)
    lowered, ref, fp32 = _build_and_compare(prepared, ranges, _mixed(prepared.layer_names), batch=8)
    assert np.abs(ref - fp32).max() > 1e-4
    assert lowered.kernels["dw1"].groups == 8 and lowered.kernels["dw2"].groups == 16


def test_unsupported_op_is_one_line_naming_it_the_node_and_the_module() -> None:
    class ErfinvEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.special.erfinv(torch.tanh(self.norm(x))).mean(1))

    prepared = prepare_model(ErfinvEncoder(), (1, 4, 8))
    with pytest.raises(LoweringError) as err:
        lower(prepared, Candidate({"fc": (8, 8)}), {"fc": (-1.0, 1.0)})
    msg = str(err.value)
    assert "\n" not in msg and "cannot lower op erfinv.default (node " in msg
    assert "rewrite that computation" in msg


def test_torch_transformer_layer_linears_are_layers() -> None:
    """nn.TransformerEncoderLayer (a torch.fx leaf before): export sees its attention's F.linear calls,
    so every projection is a searchable layer named by its module path, and it lowers."""
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x[:, 0]).mean(1))

    prepared, ranges = _prepared(Wrapped(), seed=4)
    names = prepared.layer_names
    assert names == ["enc.self_attn.linear", "enc.self_attn.out_proj", "enc.linear1", "enc.linear2", "head"]
    _build_and_compare(prepared, ranges, _mixed(names), batch=4)


class SequenceEncoder(nn.Module):
    """Token inputs (B, T, 8) of any length T: embedding, one encoder block, mean-pool head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.block = EncoderBlock(16, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


def test_planned_activation_memory_grows_with_sequence_length() -> None:
    torch.manual_seed(0)
    model = SequenceEncoder().eval()
    planned = {}
    for tokens in (8, 32):
        prepared = prepare_model(model, (1, tokens, 8))
        cand = _mixed(prepared.layer_names)
        plan = plan_activation_memory(lower(prepared, cand, {n: (-4.0, 4.0) for n in prepared.layer_names}).mod)
        planned[tokens] = plan.planned_bytes
        # at least the (heads, T, T) fp32 attention scores and the (T, 2D) MLP hidden are live at some point
        assert plan.planned_bytes >= 4 * max(2 * tokens * tokens, tokens * 32) > 0
        assert plan.planned_bytes < plan.unplanned_bytes  # storage is reused
    assert planned[32] > planned[8]
    # attention makes it superlinear: the 4x longer sequence needs more than 4x the activations
    assert planned[32] > 4 * planned[8]


@pytest.mark.slow  # real MetaSchedule tuning (1 trial per kernel) and end-to-end measurement
def test_encoder_through_the_pipeline_with_the_tvm_backend(tmp_path) -> None:
    """Issue #4: the transformer encoder runs calibration -> sensitivity -> search -> report with costs
    tuned and measured by TVM (W8A8 / fp32 layers), and the report shows measured latency."""
    import dataclasses
    import json
    import os

    from mpsearch.export import RunFolder
    from mpsearch.hardware.export_lib import use_threads
    from mpsearch.pipeline import default_backend, run
    from mpsearch.testing import tiny_run_config

    cfg = tiny_run_config(tmp_path, model__name="tiny_transformer",
                          model__factory="tests.sensitivity.other_models:tiny_transformer",
                          data__factory="tests.sensitivity.other_models:split", hw_profile__name="host_cpu_1t",
                          hw_profile__trials_per_task=1, search__n_trials=12, search__measure_front=1,
                          search__proxy_validation=0, search__sensitivity_samples=16, search__w_bits=[8, 32],
                          search__a_bits=[8, 32])
    def backend(profile, cache_dir, progress):  # the real TVM backend, timing little (nothing here is a figure)
        measure = dataclasses.replace(profile.measure, number=3, repeat=2, min_repeat_ms=1, calibration_candidates=0)
        return default_backend(dataclasses.replace(profile, measure=measure), cache_dir, progress)

    before = os.environ.get("TVM_NUM_THREADS")
    try:
        out = run(cfg, backend)
    finally:  # host_cpu_1t set one thread for this process's TVM pool: give the others theirs back
        use_threads(int(before) if before else (os.cpu_count() or 1))
    summary = json.loads((out.run_dir / "summary.json").read_text())
    assert summary["latency_source"] == "measured"
    front = RunFolder.load(out.run_dir).front()
    assert len(front) >= 1 and (front["measured_latency_ms"] > 0).all()
    assert (out.run_dir / "report.md").is_file() and "measured (ms)" in (out.run_dir / "report.md").read_text()
    # the peak activation memory of the encoder, from TVM's static plan of the lowered model
    assert (front["activation_kib"] > 0).all()
