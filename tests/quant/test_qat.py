"""QAT with knowledge distillation: learns toward the FP32 teacher, ends exactly on the kernels' grid."""

from __future__ import annotations


import pytest
import torch

from mpsearch.candidate import Candidate
from mpsearch.errors import ConfigError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.learned import LearnedModel, merge, off_grid_layers
from mpsearch.quant.learners import make_learners
from mpsearch.quant.prepare import PreparedModel
from mpsearch.quant.qat import QatKd, QatSettings, fake_quant_weight_ste
from mpsearch.quant.fake import INPUT_MEAN, fake_quant_weight, quantize_
from mpsearch.quant.reconstruct import Reconstruction, reconstruction_mse
from mpsearch.testing import synthetic_split


def test_straight_through_weights_match_the_kernels_and_pass_gradients() -> None:
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    out = fake_quant_weight_ste(w, 4)
    assert torch.equal(out.detach(), fake_quant_weight(w.detach(), 4))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_qat_kd_moves_toward_the_teacher_and_snaps_to_the_grid(tiny_prepared: PreparedModel) -> None:
    x, y = synthetic_split("calib", 256).tensors
    train, held = [(x[:128], y[:128])], [(x[128:], y[128:])]
    ranges = calibrate(tiny_prepared.graph_module, tiny_prepared.layer_names, train)
    cand = Candidate({n: (2, 8) for n in tiny_prepared.layer_names} | {"fc": (32, 8)})
    # alpha=1: distillation only, so "closer to the teacher" is what it optimises (the random tiny teacher
    # disagrees with the synthetic labels, which a CE term would pull toward instead).
    settings = QatSettings(epochs=6, lr=3e-3, batch_size=32, alpha=1.0)
    learned = QatKd(settings).learn(tiny_prepared, cand, ranges, train)
    assert off_grid_layers(tiny_prepared, learned, cand) == []
    assert "fc.bias" in learned.params and learned.stats["loss_per_epoch"][-1] < learned.stats["loss_per_epoch"][0]
    assert reconstruction_mse(tiny_prepared, learned, cand, ranges, held) < \
        reconstruction_mse(tiny_prepared, None, cand, ranges, held)
    again = QatKd(settings).learn(tiny_prepared, cand, ranges, train)  # seeded: the same result
    assert all(torch.equal(learned.params[k], again.params[k]) for k in learned.params)


def test_qat_starts_from_the_bias_corrected_round_to_nearest_model(tiny_corrected: tuple, tiny_batches: list) -> None:
    """Layers that carry their input means run round-to-nearest with corrected biases; QAT starts from
    that model, not from the uncorrected one (at 2 bits the correction is most of the accuracy)."""
    prepared, ranges = tiny_corrected
    cand = Candidate({n: (2, 8) for n in prepared.layer_names} | {"fc": (32, 8)})
    # a step too small to move anything: the learned model is the starting point
    learned = QatKd(QatSettings(epochs=1, lr=1e-12)).learn(prepared, cand, ranges, tiny_batches)
    x = tiny_batches[0][0]
    with torch.no_grad():
        rtn = quantize_(prepared.copy_module(), cand, ranges)(x)
        start = quantize_(learned.apply(prepared).copy_module(), cand, learned.ranges)(x)
        uncorrected = prepared.copy_module()
        for name in prepared.layer_names:
            delattr(uncorrected.get_submodule(name), INPUT_MEAN)
        plain = quantize_(uncorrected, cand, ranges)(x)
    torch.testing.assert_close(start, rtn, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, rtn, rtol=1e-3, atol=1e-4)  # the correction is not a no-op here


def test_learners_chain_into_one_patch(tiny_prepared: PreparedModel, tiny_ranges: dict, tiny_batches: list) -> None:
    learners = make_learners("brecq", lsq=True, iters=5, qat_epochs=1, qat_lr=1e-3)
    assert [type(lr) for lr in learners] == [Reconstruction, QatKd]
    cand = Candidate.uniform(tiny_prepared.layer_names, 4, 4)
    model, ranges, chain = tiny_prepared, tiny_ranges, []
    for learner in learners:
        chain.append(learner.learn(model, cand, ranges, tiny_batches))
        model, ranges = chain[-1].apply(model), chain[-1].ranges
    patch = LearnedModel.from_bytes(merge(tiny_prepared, chain).to_bytes())
    assert patch.method == "brecq+qat_kd" and patch.ranges == ranges
    assert off_grid_layers(tiny_prepared, patch, cand) == []
    sd, want = patch.apply(tiny_prepared).graph_module.state_dict(), model.graph_module.state_dict()
    assert all(torch.equal(sd[k], want[k]) for k in want)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        QatKd(QatSettings(epochs=0))


def test_qat_kd_trains_a_several_input_model() -> None:
    """Token ids and a mask (two int64 inputs): batches are ``((ids, mask), label)``."""
    from torch import nn

    from mpsearch.quant.prepare import as_inputs, prepare_model

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed, self.fc1, self.fc2 = nn.Embedding(20, 8), nn.Linear(8, 16), nn.Linear(16, 3)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc1(self.embed(ids))) * mask.unsqueeze(-1)
            return self.fc2(h.sum(1) / mask.sum(1, keepdim=True))

    prepared = prepare_model(Tokens().eval(), as_inputs([{"shape": [1, 6], "dtype": "int64"}] * 2))
    g = torch.Generator().manual_seed(0)
    ids, mask = torch.randint(0, 20, (64, 6), generator=g), torch.ones(64, 6, dtype=torch.int64)
    mask[:, 4:] = torch.randint(0, 2, (64, 2), generator=g)
    batches = [((ids[i:i + 32], mask[i:i + 32]), torch.randint(0, 3, (32,), generator=g)) for i in (0, 32)]
    ranges = calibrate(prepared.graph_module, prepared.layer_names, batches)
    cand = Candidate.uniform(prepared.layer_names, 4, 8)
    learned = QatKd(QatSettings(epochs=3, lr=3e-3, batch_size=16, alpha=1.0)).learn(prepared, cand, ranges, batches)
    assert off_grid_layers(prepared, learned, cand) == [] and len(learned.stats["loss_per_epoch"]) == 3
    applied = learned.apply(prepared)
    assert applied.inputs == prepared.inputs  # the learned model keeps its declared inputs
    with torch.no_grad():
        assert applied.graph_module(ids, mask).shape == (64, 3)
