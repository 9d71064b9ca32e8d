"""InfoNCE: exact values, Matryoshka, false-negative masking, and gathering across processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import train.distributed as distributed
from train.losses import Moon3InfoNCELoss, in_batch_accuracy


def test_loss_is_log_batch_size_for_identical_embeddings():
    embeddings = F.normalize(torch.ones(4, 8), dim=-1)
    loss = Moon3InfoNCELoss(temperature=0.1, gather_across_devices=False)(embeddings, embeddings)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_hard_negatives_add_columns():
    embeddings = F.normalize(torch.ones(3, 8), dim=-1)
    docs = torch.cat([embeddings, embeddings, embeddings])  # 3 positives + 6 identical hard negatives
    loss = Moon3InfoNCELoss(gather_across_devices=False)(embeddings, docs)
    assert loss.item() == pytest.approx(math.log(9), abs=1e-5)


def test_matryoshka_averages_the_prefix_losses():
    torch.manual_seed(0)
    queries, docs = torch.randn(5, 16), torch.randn(5, 16)
    plain = Moon3InfoNCELoss(gather_across_devices=False)
    expected = (plain(queries[:, :4], docs[:, :4]) + plain(queries[:, :8], docs[:, :8]) + plain(queries, docs)) / 3
    loss = Moon3InfoNCELoss(matryoshka_dims=[4, 8, 16], gather_across_devices=False)(queries, docs)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_duplicate_positives_are_not_negatives():
    positive = F.normalize(torch.ones(1, 8), dim=-1)
    queries = positive.expand(2, -1)  # two completions of the same query, same product
    loss_fn = Moon3InfoNCELoss(gather_across_devices=False)
    keys = torch.tensor([7, 7])
    assert loss_fn(queries, positive.expand(2, -1), doc_keys=keys).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(queries, positive.expand(2, -1)).item() == pytest.approx(math.log(2), abs=1e-6)


def test_gathered_loss_with_world_size_one_equals_plain_loss():
    torch.manual_seed(0)
    queries, docs = torch.randn(6, 16), torch.randn(9, 16)
    gathered = Moon3InfoNCELoss(gather_across_devices=True)(queries, docs)
    plain = Moon3InfoNCELoss(gather_across_devices=False)(queries, docs)
    assert gathered.item() == pytest.approx(plain.item(), rel=1e-7)


def test_gather_offsets_labels_by_rank(monkeypatch):
    """Rank 1 of 2: the other rank's docs come first, so the local positives sit at offset N."""
    torch.manual_seed(0)
    queries, docs, other_docs = torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    monkeypatch.setattr(distributed, "world_size_and_rank", lambda: (2, 1))
    import torch.distributed.nn.functional as dist_functional

    monkeypatch.setattr(dist_functional, "all_gather", lambda tensor: (other_docs, tensor))
    loss = Moon3InfoNCELoss(temperature=0.5)(queries, docs)
    scores = F.normalize(queries, dim=-1) @ F.normalize(torch.cat([other_docs, docs]), dim=-1).T / 0.5
    expected = F.cross_entropy(scores, torch.arange(3) + 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="temperature"):
        Moon3InfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="matryoshka_dims"):
        Moon3InfoNCELoss(matryoshka_dims=[16, 8])
    with pytest.raises(ValueError, match="positives"):
        Moon3InfoNCELoss(gather_across_devices=False)(torch.randn(4, 8), torch.randn(2, 8))


def test_config_dict_records_hyperparameters():
    config = Moon3InfoNCELoss(temperature=0.02, matryoshka_dims=[8, 16]).get_config_dict()
    assert config == {
        "temperature": 0.02,
        "matryoshka_dims": [8, 16],
        "matryoshka_weights": [1.0, 1.0],
        "gather_across_devices": True,
    }


def test_in_batch_accuracy_counts_top1_hits():
    docs = torch.eye(3)
    assert in_batch_accuracy(docs, docs) == 1.0
    assert in_batch_accuracy(docs[[1, 0, 2]], docs) == pytest.approx(1 / 3)
