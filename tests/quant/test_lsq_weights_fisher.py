"""Weight LSQ (learned per-channel steps on a clipped grid the kernels take) and Fisher-weighted BRECQ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mpsearch.candidate import Candidate
from mpsearch.config import RunConfig, validate
from mpsearch.errors import ConfigError, MPSearchError
from mpsearch.models.registry import fmnist_split, resnet20_fmnist
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.fake import no_clip_weight_scale, quantize_weight
from mpsearch.quant.learned import off_grid_layers
from mpsearch.quant.learners import make_learners
from mpsearch.quant.lsq import LsqWeightStep, mse_weight_step
from mpsearch.quant.prepare import PreparedModel, prepare_model
from mpsearch.quant.reconstruct import Reconstruction, ReconstructionSettings, graph_blocks, output_fisher, unit_mse

REAL_LAYER = "layer2.0.conv2"  # a 32 -> 32 3x3 convolution of the trained default model


@pytest.fixture(scope="module")
def default_model() -> PreparedModel:
    return prepare_model(resnet20_fmnist(), (1, 1, 28, 28))


@pytest.fixture(scope="module")
def fmnist_calib() -> tuple[list, list]:
    """Two disjoint halves of the calibration split (never the test split)."""
    ds = fmnist_split("calib", 256)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([int(ds[i][1]) for i in range(len(ds))])
    return [(x[:128], y[:128])], [(x[128:], y[128:])]


@pytest.fixture(scope="module")
def default_ranges(default_model: PreparedModel, fmnist_calib: tuple) -> dict:
    return calibrate(default_model.graph_module, default_model.layer_names, fmnist_calib[0])


@pytest.mark.parametrize("bits", [4, 2])
def test_mse_step_lowers_the_weight_error_of_a_real_layer_and_round_trips(default_model: PreparedModel,
                                                                         bits: int) -> None:
    w = default_model.graph_module.get_submodule(REAL_LAYER).weight.detach()
    q = LsqWeightStep(w, bits)
    step = q.step().detach()
    smax = no_clip_weight_scale(w, bits)
    assert torch.all(step <= smax) and torch.any(step < smax * 0.99)  # a clipped grid, never wider than max
    learned = q.fake_quant(w).detach()
    qmax, view = 2 ** (bits - 1) - 1, smax.view(-1, 1, 1, 1)
    on_max = torch.clamp(torch.round(w / view), -qmax, qmax) * view
    err_lsq, err_max = float((learned - w).pow(2).sum()), float((on_max - w).pow(2).sum())
    assert err_lsq < 0.9 * err_max  # clearly lower than max scaling at 4 and at 2 bits
    # The kernels' quantizer recovers exactly the learned codes and (to an ulp) the learned step.
    codes, scale = quantize_weight(learned, bits)
    assert torch.equal(codes.float(), q.codes(w))
    assert torch.allclose(scale, step, rtol=1e-6, atol=0)
    assert torch.equal(mse_weight_step(w, bits), q.s0)


def test_lsq_gradient_is_scaled_and_the_step_stays_bounded() -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, 3, 3)
    q = LsqWeightStep(w, 4, init="max")
    q.fake_quant(w).pow(2).sum().backward()
    g_scaled = q.u.grad.clone()
    q.u.grad = None
    q.grad_scale = 1.0
    q.fake_quant(w).pow(2).sum().backward()
    assert torch.allclose(g_scaled, q.u.grad / (36 * 7) ** 0.5, rtol=1e-5)  # LSQ's 1/sqrt(N·qmax)
    with torch.no_grad():
        q.u.fill_(2.0)  # a step beyond max|w|/qmax would lose each channel's ±qmax code
    assert torch.equal(q.step().detach(), q.smax)


@pytest.mark.parametrize("bits", [4, 2])
def test_learned_weight_steps_lower_the_reconstruction_error_of_a_real_layer(default_model: PreparedModel,
                                                                             fmnist_calib: tuple, default_ranges: dict,
                                                                             bits: int) -> None:
    train, held = fmnist_calib
    layers = default_model.layer_names
    cand = Candidate({n: (bits, 8) if n == REAL_LAYER else (32, 32) for n in layers})
    ranges = default_ranges
    results = {}
    for lsq_w in (False, True):
        learner = Reconstruction("layer", ReconstructionSettings(iters=40, batch_size=32, lsq_weights=lsq_w))
        learned = learner.learn(default_model, cand, ranges, train)
        assert off_grid_layers(default_model, learned, cand) == []
        results[lsq_w] = unit_mse(default_model, learned, cand, ranges, held, "layer")[REAL_LAYER]
        if lsq_w:
            assert learned.stats["units"][0]["weight_step_ratio"][REAL_LAYER] < 1.0
            assert learner.describe() == "adaround (LSQ weight)"
    rtn = unit_mse(default_model, None, cand, ranges, held, "layer")[REAL_LAYER]
    # held-out calibration images: learned steps clearly beat round-to-nearest; at 4 bits they also beat
    # AdaRound on the unclipped step; at 2 bits AdaRound starts from the clipped step too, and the learned
    # step has about as little to add (within 2%)
    assert results[True] < 0.9 * rtn
    assert results[True] < results[False] if bits == 4 else results[True] < 1.02 * results[False]


def test_fisher_is_the_squared_loss_gradient_per_sample(tiny_prepared: PreparedModel, tiny_batches: list) -> None:
    gm = tiny_prepared.graph_module
    names = [b.nodes[-1] for b in graph_blocks(gm)]
    assert names[-1] == "fc"
    fisher = output_fisher(gm, names, tiny_batches)
    n = sum(len(y) for _, y in tiny_batches)
    with torch.no_grad():
        logits = torch.cat([gm(x) for x, _ in tiny_batches])
    y = torch.cat([y for _, y in tiny_batches])
    for name in names:
        assert fisher[name].shape[0] == n and torch.all(fisher[name] >= 0)
        assert float(fisher[name].float().sum()) > 0
    assert fisher["relu"].shape[1:] == (4, 8, 8)  # the stem block's output, per sample and element
    # logits: the gradient of the summed cross-entropy is softmax − one-hot, per sample (stored as bfloat16)
    expected = (F.softmax(logits, 1) - F.one_hot(y, logits.shape[1])).pow(2)
    assert torch.allclose(fisher["fc"].float(), expected, rtol=1e-2, atol=1e-6)
    # a loss that ignores an output gives it zero Fisher
    first = output_fisher(gm, ["fc"], tiny_batches, loss_fn=lambda z, _y: z[:, 0].sum())["fc"].float()
    assert torch.all(first[:, 1:] == 0) and torch.all(first[:, 0] == 1)


def test_fisher_weighting_changes_what_brecq_learns(tiny_prepared: PreparedModel, tiny_ranges: dict,
                                                    tiny_batches: list) -> None:
    # 4 bits: at 2 bits, 30 steps learn no rounding better than round-to-nearest on the clipped grid,
    # so both runs keep it
    cand = Candidate.uniform(tiny_prepared.layer_names, 4, 8)
    plain = Reconstruction("block", ReconstructionSettings(iters=30)).learn(tiny_prepared, cand, tiny_ranges,
                                                                           tiny_batches)
    learner = Reconstruction("block", ReconstructionSettings(iters=30, fisher=True))
    weighted = learner.learn(tiny_prepared, cand, tiny_ranges, tiny_batches)
    assert learner.describe() == "brecq (Fisher)"
    assert off_grid_layers(tiny_prepared, weighted, cand) == []
    assert any(not torch.equal(plain.params[k], weighted.params[k]) for k in plain.params)
    # the loss it reports is the Fisher-weighted one (normalised to mean 1), not the plain MSE
    assert [u["mse_rtn"] for u in plain.stats["units"]] != [u["mse_rtn"] for u in weighted.stats["units"]]
    with pytest.raises(MPSearchError, match="for blocks"):
        Reconstruction("layer", ReconstructionSettings(fisher=True))


def test_options_are_validated_in_one_line() -> None:
    cfg = RunConfig()
    cfg.search.lsq_weights = True
    with pytest.raises(ConfigError, match="search.lsq_weights=true") as err:
        validate(cfg)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(MPSearchError, match="use ptq adaround or brecq"):
        make_learners("none", lsq_weights=True, qat_epochs=1)
    learners = make_learners("brecq", lsq=True, lsq_weights=True, fisher=True, qat_epochs=1)
    assert [lr.describe() for lr in learners] == ["brecq (Fisher, LSQ act, LSQ weight)", "qat_kd (LSQ act)"]
    assert make_learners("adaround", fisher=True)[0].describe() == "adaround"  # Fisher is BRECQ's


@pytest.mark.slow
def test_pipeline_runs_fisher_brecq_with_learned_weight_steps(tmp_path: Path) -> None:
    from mpsearch.pipeline import run
    from mpsearch.quant.learned import LearnedModel
    from mpsearch.testing import table_backend_factory, tiny_run_config

    cfg = tiny_run_config(tmp_path, search__n_trials=12, search__sensitivity_samples=16, search__measure_front=1,
                          search__proxy_validation=0, search__w_bits=[2, 4], search__a_bits=[8],
                          search__ptq="brecq", search__brecq_fisher=True, search__lsq=True,
                          search__lsq_weights=True, search__ptq_iters=5)
    out = run(cfg, table_backend_factory)
    learned = [e for e in out.summary.candidates if e.accuracy_rtn is not None]
    assert learned
    notes = "\n".join(out.summary.notes)
    assert "Learned quantization (brecq (Fisher, LSQ act, LSQ weight))" in notes
    assert "a learned LSQ step" in notes
    for e in learned:
        assert f"{e.label} (" in notes
        patch = LearnedModel.from_bytes((out.run_dir / "candidates" / f"{e.label}.learned.pt").read_bytes())
        assert patch.method == "brecq" and patch.stats["brecq"]["fisher"] is True
        assert any("weight_step_ratio" in u for u in patch.stats["brecq"]["units"])


@pytest.mark.tvm
def test_learned_steps_and_codes_reach_the_tvm_kernels_exactly(tiny_prepared: PreparedModel, tiny_ranges: dict,
                                                                tiny_batches: list) -> None:
    tvm = pytest.importorskip("tvm")
    from mpsearch.hardware.lowering import lower
    from mpsearch.quant.fake import quantize_

    cand = Candidate({"stem": (8, 8), "conv1": (4, 8), "conv2": (2, 8), "down": (4, 32), "fc": (2, 8)})
    learned = Reconstruction("block", ReconstructionSettings(iters=20, lsq_weights=True, fisher=True)).learn(
        tiny_prepared, cand, tiny_ranges, tiny_batches)
    model = learned.apply(tiny_prepared)
    clipped = 0
    for name, (w_bits, _) in cand.items():
        w = model.graph_module.get_submodule(name).weight.detach()
        codes, scale = quantize_weight(w, w_bits)
        # every channel keeps a ±qmax code, so the kernels' max|w|/qmax is the learned step
        assert torch.equal(codes.abs().flatten(1).amax(1).float(), torch.full((w.shape[0],), 2.0 ** (w_bits - 1) - 1))
        orig = tiny_prepared.graph_module.get_submodule(name).weight.detach()
        clipped += int((scale < no_clip_weight_scale(orig, w_bits) * 0.999).sum())
    assert clipped > 0  # learned steps below max scaling reached the weights the lowering reads
    x = tiny_batches[0][0][:8]
    lowered = lower(model, cand, learned.ranges, batch=8)
    exe = tvm.relax.build(lowered.mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x.numpy()), *[tvm.runtime.tensor(a) for a in lowered.params]).numpy()
    with torch.no_grad():
        ref = quantize_(model.copy_module(), cand, learned.ranges)(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).all()
    torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(ref), rtol=1e-4, atol=1e-4 * abs(ref).max())
