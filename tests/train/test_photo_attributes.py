"""The stage-1 photo attribute head (`photo_attribute_weight`): its labels, its loss, and what it trains."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import build_tiny
from tests.train.test_grpo_images_and_kl import image_rows
from tests.train.test_training import perturb_zero_init, stage1_trainer
from train.data import Moon3PairCollator, attribute_classes
from train.photo_attributes import PhotoAttributeHead, mean_image_features

FIELDS = ["articleType", "baseColour", "gender"]


def test_attribute_classes_collects_sorted_values_of_positives_and_negatives_and_names_missing_fields():
    rows = [
        {
            "positive": {"attributes": {"usage": "Sports", "gender": "Men"}},
            "negatives": [{"attributes": {"usage": "Casual"}}],
        },
        {"positive": {"attributes": '{"usage": "Formal"}'}},  # as Arrow stores it: JSON text
    ]
    assert attribute_classes(rows, ["usage", "gender"]) == {"usage": ["Casual", "Formal", "Sports"], "gender": ["Men"]}
    with pytest.raises(ValueError, match=r"\['season'\].*photo_attribute_weight 0"):
        attribute_classes(rows, ["usage", "season"])


def test_collator_labels_photo_queries_with_their_positive_and_documents_with_their_own_attributes(
    tiny_tokenizer, tmp_path
):
    rows = image_rows(tmp_path, 3)  # queries: photo, photo + text, text only
    rows[0]["negatives"] = [dict(rows[1]["positive"])]
    model, processor = build_tiny(tiny_tokenizer)
    classes = attribute_classes(rows, FIELDS)
    collator = Moon3PairCollator(processor, num_hard_negatives=1, attribute_classes=classes)
    batch = collator(rows)
    labels = batch["chunks"][0]["attribute_labels"]  # (3 queries + 6 documents + 3 SFT, F)

    def expected(product):
        return [classes[name].index(product["attributes"][name]) for name in FIELDS]

    assert labels.shape == (12, len(FIELDS))
    assert labels[0].tolist() == expected(rows[0]["positive"])  # photo query: its product's values
    assert labels[1].tolist() == expected(rows[1]["positive"])  # photo + text query
    assert labels[2].tolist() == [-100] * len(FIELDS)  # text-only query: no photo to read
    assert labels[3].tolist() == expected(rows[0]["positive"])  # the positives
    assert labels[6].tolist() == expected(rows[1]["positive"])  # row 0's hard negative
    assert (labels[9:] == -100).all()  # SFT sequences never carry them
    # the chunked collator splits the same labels over its chunks
    chunked = Moon3PairCollator(processor, 5, num_hard_negatives=1, attribute_classes=classes)(rows)
    torch.testing.assert_close(torch.cat([chunk["attribute_labels"] for chunk in chunked["chunks"]]), labels)
    assert "attribute_labels" not in Moon3PairCollator(processor, num_hard_negatives=1)(rows)["chunks"][0]


def test_head_loss_is_the_summed_cross_entropy_of_labelled_pairs_and_counts_right_answers():
    head = PhotoAttributeHead(4, {"usage": ["Casual", "Sports"], "gender": ["Men", "Women", "Unisex"]})
    with torch.no_grad():
        for readout in head.readouts:
            readout.weight.zero_()
            readout.bias.zero_()
        head.readouts[0].bias.copy_(torch.tensor([2.0, 0.0]))  # always "Casual"
    labels = torch.tensor([[0, 1], [1, -100], [-100, -100]])
    loss_sum, count, correct = head.loss_terms(torch.randn(3, 4), labels)
    casual = -math.log(math.exp(2) / (math.exp(2) + 1))
    sports = -math.log(1 / (math.exp(2) + 1))
    assert int(count) == 3
    assert loss_sum.item() == pytest.approx(casual + sports + math.log(3), rel=1e-5)
    assert correct.tolist() == [1, 0]  # usage: right on row 0, wrong on row 1; gender: uniform logits pick index 0


def test_mean_image_features_averages_only_image_positions():
    features = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)  # (B=2, L=3, D=2)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    pooled = mean_image_features(features, mask)
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


def attribute_trainer(model, processor, rows, tmp_path, **overrides):
    """A stage-1 trainer over `rows` with the photo attribute head over FIELDS (used when the weight is > 0)."""
    return stage1_trainer(
        model, processor, rows, tmp_path, attribute_classes=attribute_classes(rows, FIELDS), **overrides
    )


def vision_gradient(trainer, rows) -> torch.Tensor:
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    trainer.training_step(trainer.model, trainer.data_collator(rows))
    return torch.cat(
        [p.grad.flatten() for p in trainer.model.backbone.model.visual.parameters() if p.grad is not None]
    )


def test_head_loss_reaches_the_vision_tower_and_is_grad_cached_exactly(tiny_tokenizer, tmp_path):
    rows = image_rows(tmp_path, 6)
    grads, head_grads = {}, {}
    for name, overrides in {
        "off": {"photo_attribute_weight": 0.0},
        "one pass": {"photo_attribute_weight": 2.0},
        "cached": {"photo_attribute_weight": 2.0, "embedding_chunk_size": 5},
    }.items():
        torch.manual_seed(0)
        model, processor = build_tiny(tiny_tokenizer)
        perturb_zero_init(model)
        torch.manual_seed(1)
        trainer = attribute_trainer(model, processor, rows, tmp_path, sft_weight=0.5, **overrides)
        grads[name] = vision_gradient(trainer, rows)
        if trainer.attribute_head is not None:
            head_grads[name] = torch.cat([p.grad.flatten() for p in trainer.attribute_head.parameters()])
    assert not torch.allclose(grads["off"], grads["one pass"])  # the head's loss reaches the tower
    torch.testing.assert_close(grads["cached"], grads["one pass"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head_grads["cached"], head_grads["one pass"], rtol=1e-4, atol=1e-6)
    assert head_grads["one pass"].abs().sum() > 0


def test_training_with_the_head_updates_it_logs_accuracies_and_saves_no_head(tiny_tokenizer, tmp_path):
    rows = image_rows(tmp_path, 6)
    model, processor = build_tiny(tiny_tokenizer)
    trainer = attribute_trainer(model, processor, rows, tmp_path, photo_attribute_weight=1.0, max_steps=3)
    before = [p.detach().clone() for p in trainer.attribute_head.parameters()]
    trainer.train()
    after = list(trainer.attribute_head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # the optimizer trains the head
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"photo_attributes/loss", *(f"photo_attributes/accuracy_{name}" for name in FIELDS)} <= logged
    assert not any("attribute" in name for name in model.state_dict())  # the checkpoint is the plain model


def test_head_is_refused_without_raw_signals_and_with_resume(tiny_tokenizer, tmp_path):
    from train.config import Moon3ContrastiveConfig

    rows = image_rows(tmp_path, 3)
    model, processor = build_tiny(tiny_tokenizer, use_fusion=False, use_fire=False)
    with pytest.raises(ValueError, match="fusion or FIRE"):
        attribute_trainer(model, processor, rows, tmp_path, photo_attribute_weight=1.0)
    with pytest.raises(ValueError, match="not saved in checkpoints"):
        Moon3ContrastiveConfig(output_dir=str(tmp_path), photo_attribute_weight=1.0, resume_from_checkpoint="x")
    with pytest.raises(ValueError, match="photo_attribute_weight must be >= 0"):
        Moon3ContrastiveConfig(output_dir=str(tmp_path), photo_attribute_weight=-1.0)
