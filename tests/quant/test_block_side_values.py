"""Block reconstruction on graphs with side values: several inputs (features and a mask), a value every
block reads (the mask, as attention masks and rotary tables are read by every transformer layer), the
batch size read off an input to reshape with, and ``(batch · tokens, features)`` rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.candidate import Candidate
from mpsearch.errors import MPSearchError
from mpsearch.quant.calibration import calibrate
from mpsearch.quant.prepare import InputSpec, prepare_model
from mpsearch.quant.reconstruct import (
    Reconstruction, ReconstructionSettings, graph_blocks, reconstruction_mse, side_values, take_samples, unit_mse,
)

T, D = 6, 8


class _Masked(nn.Module):
    """Token features ``(B, T, D)`` and a ``(B, T)`` mask; the mask gates every block, the third linear runs
    on ``(B · T, D)`` rows and the batch size comes back from ``x.shape[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].float()
        h = torch.relu(self.a(x)) * m
        h = torch.relu(self.b(h)) * m + h
        h = self.c(h.reshape(-1, D)).reshape(x.shape[0], T, D) * m
        return self.head(h.sum(1))


def _data(n: int = 48, per_batch: int = 16) -> list:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, T, D, generator=g)
    mask = (torch.rand(n, T, generator=g) > 0.3).long()
    y = torch.randint(0, 3, (n,), generator=g)
    return [((x[i:i + per_batch], mask[i:i + per_batch]), y[i:i + per_batch]) for i in range(0, n, per_batch)]


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    return prepare_model(_Masked().eval(), [InputSpec((1, T, D)), InputSpec((1, T), "int64")])


def test_a_value_every_block_reads_does_not_keep_the_graph_in_one_block(prepared) -> None:
    blocks = graph_blocks(prepared.graph_module)
    assert [b.layers for b in blocks] == [("a",), ("b",), ("c",), ("head",)]
    side = side_values(prepared.graph_module, blocks, [x for x, _ in _data()])
    assert side.samples == 48 and len(side.batches) == 3
    # the features enter the first block, the mask gates the others: one row per sample; x.shape[0] is a count
    assert side.per_sample[blocks[0].input] == 1 and set(side.per_sample.values()) == {1}
    assert len(side.per_sample) >= 2 and list(side.per_count.values()) == [1]
    picked = side.at(side.joined(), torch.tensor([5, 17, 40]))
    assert all(v.shape[0] == 3 for k, v in picked.items() if k in side.per_sample)
    assert [picked[k] for k in side.per_count] == [3]


@pytest.mark.parametrize("granularity", ["block", "layer"])
def test_learned_rounding_of_a_several_input_model_beats_round_to_nearest(prepared, granularity: str) -> None:
    data = _data()
    layers = prepared.layer_names
    ranges = calibrate(prepared.graph_module, layers, data)
    cand = Candidate({n: (3, 8) for n in layers})
    learned = Reconstruction(granularity, ReconstructionSettings(iters=80, batch_size=16, fisher=granularity == "block")
                             ).learn(prepared, cand, ranges, data)
    assert len(learned.stats["units"]) == (4 if granularity == "block" else len(layers))
    rtn = reconstruction_mse(prepared, None, cand, ranges, data)
    assert reconstruction_mse(prepared, learned, cand, ranges, data) < rtn
    per_unit = unit_mse(prepared, learned, cand, ranges, data, granularity)
    before = unit_mse(prepared, None, cand, ranges, data, granularity)
    assert set(per_unit) == set(before) and sum(per_unit.values()) <= sum(before.values())


def test_token_rows_are_taken_a_sample_at_a_time() -> None:
    rows = torch.arange(4 * 3 * 2).reshape(12, 2)  # 4 samples of 3 rows
    assert take_samples(rows, torch.tensor([2, 0]), 3).tolist() == [[12, 13], [14, 15], [16, 17], [0, 1], [2, 3],
                                                                      [4, 5]]


class _SequenceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x.transpose(0, 1)))).mean(0)  # (B, T, D) in, (T, B, D) inside


def test_a_side_value_with_its_batch_on_another_axis_is_one_line() -> None:
    prepared = prepare_model(_SequenceFirst().eval(), [InputSpec((1, T, D))])
    blocks = graph_blocks(prepared.graph_module)
    with pytest.raises(MPSearchError, match=r"cannot tell the samples of graph value .*set search.ptq=none$"):
        side_values(prepared.graph_module, blocks, [torch.randn(4, T, D)])


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_transformers_split_into_blocks_and_learn(name: str) -> None:
    """BERT's three inputs (ids, mask, token types) and Llama's rotary tables and causal mask, read by
    every layer: several blocks (Llama was one block for the whole model, BERT refused), each learned."""
    pytest.importorskip("transformers")
    from tests.zoo.models import ZOO, InputSpec as ZooSpec, _hf

    torch.manual_seed(0)
    if name == "llama":
        model = _hf("LlamaForCausalLM", "LlamaConfig", ("input_ids", "attention_mask"), vocab_size=64,
                    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)()
        specs = [ZooSpec((1, 16), "int64"), ZooSpec((1, 16), "int64")]
        ids, mask = torch.randint(0, 64, (32, 16)), torch.ones(32, 16, dtype=torch.long)
        mask[::3, 12:] = 0
        x = (ids, mask)
    else:
        model, specs = ZOO[name].build(), list(ZOO[name].inputs)
        x = ZOO[name].sample(32, seed=1)
    with torch.no_grad():
        y = model(*x).argmax(-1)
    data = [(tuple(t[i:i + 16] for t in x), y[i:i + 16]) for i in (0, 16)]
    prepared = prepare_model(model.eval(), [InputSpec(s.shape, s.dtype) for s in specs])
    layers = prepared.layer_names
    blocks = graph_blocks(prepared.graph_module)
    assert len(blocks) >= 6 and sorted(n for b in blocks for n in b.layers) == sorted(layers)
    ranges = calibrate(prepared.graph_module, layers, data)
    cand = Candidate({n: (4, 8) for n in layers})
    learned = Reconstruction("block", ReconstructionSettings(iters=30, batch_size=8, fisher=True)
                             ).learn(prepared, cand, ranges, data)
    assert len(learned.stats["units"]) == len(blocks)
    assert reconstruction_mse(prepared, learned, cand, ranges, data) < reconstruction_mse(prepared, None, cand,
                                                                                          ranges, data)


class _TokenMajor(nn.Module):
    """``(B, T, D)`` in, the layers on ``(T · B, D)`` rows token after token (a sequence-first model): the
    rows of a sample are not consecutive, and a gate computed from the input alone is read the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.transpose(0, 1).reshape(-1, D)
        h = torch.relu(self.b(torch.relu(self.a(rows)))) * torch.sigmoid(rows)
        return self.c(h).reshape(T, -1, 3).mean(0)


def test_rows_that_interleave_the_samples_are_refused_not_mixed() -> None:
    prepared = prepare_model(_TokenMajor().eval(), [InputSpec((1, T, D))])
    blocks = graph_blocks(prepared.graph_module)
    assert len(blocks) >= 2
    with pytest.raises(MPSearchError, match=r"graph value '.*' \(12, 8\): its rows interleave the samples \(a "
                                            r"sequence-first layout\); set search.ptq=none$"):
        side_values(prepared.graph_module, blocks, [torch.randn(4, T, D)])
    # a batch of copies tells nothing apart: not probed (the layout check needs two different samples)
    side_values(prepared.graph_module, blocks, [torch.randn(1, T, D).expand(4, T, D)])
