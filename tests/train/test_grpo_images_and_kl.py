"""Stage 2 on what real runs need: image, text and image+text queries in one batch (one and two processes), KL to a
reference model (beta > 0), and policy log-probabilities computed in tiles instead of full-vocabulary logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import build_tiny
from train.data import synthetic_rows

COLOURS = [(200, 10, 10), (10, 160, 10), (10, 10, 200), (220, 200, 20), (120, 0, 160), (0, 150, 150)]


def image_rows(folder, num_rows: int = 6) -> list[dict]:
    """Synthetic rows whose products have a photo; queries cycle through image-only, image+text and text-only."""
    from PIL import Image

    rows = synthetic_rows(num_rows)
    for index, row in enumerate(rows):
        path = folder / f"product-{index}.png"
        Image.new("RGB", (48, 48), COLOURS[index % len(COLOURS)]).save(path)
        row["positive"]["images"] = [str(path)]
        text = row["query"]["text"]
        row["query"] = [{"image": str(path)}, {"text": text, "image": str(path)}, {"text": text}][index % 3]
    return rows


def grpo_trainer(model, processor, rows, tmp_path, **overrides):
    from datasets import Dataset

    from train.config import Moon3GRPOConfig
    from train.data import to_grpo_dataset
    from train.trainer import Moon3GRPOTrainer

    settings = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=6,
        num_generations=2,  # 3 queries per step
        max_completion_length=4,  # 4 tokens: fast
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        max_steps=2,
        target_reasoning_tokens=4,
    )
    settings.update(overrides)
    trainer = Moon3GRPOTrainer(
        model=model,
        args=Moon3GRPOConfig(**settings),
        train_dataset=to_grpo_dataset(Dataset.from_list(rows), processor),
        processing_class=processor,
    )
    return trainer


# --------------------------------------------------------------------------- tiled log-probabilities


def reference_log_probs(hidden, labels, lm_head):
    """Full (B, L - 1, V) float32 logits: what the tiles must reproduce."""
    logits = lm_head(hidden)[:, :-1].float()
    targets = labels[:, 1:]
    log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return log_probs.masked_fill(targets == -100, 0.0)


@pytest.mark.parametrize("tile_elements", [10_000_000, 2 * 6 * 50, 3 * 50])  # one tile, 2-row tiles, 3-position tiles
def test_tiled_log_probs_equal_full_logits_values_and_gradients(tile_elements):
    from train.trainer import tiled_log_probs

    torch.manual_seed(0)
    lm_head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[:, :2] = -100  # the prompt
    labels[1, 5:] = -100  # a row that ended early
    expected = reference_log_probs(hidden, labels, lm_head)
    (expected * torch.arange(1.0, 7.0)).sum().backward()
    expected_grads = hidden.grad.clone(), lm_head.weight.grad.clone()
    hidden.grad = lm_head.weight.grad = None

    log_probs, entropy = tiled_log_probs(hidden, labels, lm_head, tile_elements=tile_elements)
    assert log_probs.shape == entropy.shape == (3, 6)
    torch.testing.assert_close(log_probs, expected)
    assert (log_probs[:, :1] == 0).all() and (entropy[:, :1] == 0).all()  # before the first scored column
    (log_probs * torch.arange(1.0, 7.0)).sum().backward()
    torch.testing.assert_close(hidden.grad, expected_grads[0])
    torch.testing.assert_close(lm_head.weight.grad, expected_grads[1])


def test_policy_forward_keeps_every_logits_tile_under_the_budget(tiny_model, monkeypatch):
    """The policy's fused forward never asks the LM head for more than LOGIT_TILE_ELEMENTS logits at once, and gives
    the same log-probabilities as with one tile."""
    import train.trainer
    from train.trainer import install_fused_policy_head

    model, processor = tiny_model
    install_fused_policy_head(model)
    batch = processor(queries=["men navy shirts", "women red running shoes", "bag"], mode="reason")
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    one_tile = model(**batch, labels=labels, fused_lm_head=True).log_probs
    sizes = []
    model.backbone.lm_head.register_forward_hook(lambda module, args, output: sizes.append(output.numel()))
    budget = 4 * model.config.vlm_config.text_config.vocab_size
    monkeypatch.setattr(train.trainer, "LOGIT_TILE_ELEMENTS", budget)
    tiled = model(**batch, labels=labels, fused_lm_head=True).log_probs
    assert sizes and max(sizes) <= budget and len(sizes) > 1
    torch.testing.assert_close(tiled, one_tile)


# --------------------------------------------------------------------------- image, text and image+text queries


@pytest.mark.slow  # ~10 s quiet, 47 s on the shared machine
def test_stage2_trains_on_image_text_and_image_text_queries_in_one_batch(tiny_tokenizer, tmp_path):
    from moon3.processing_moon3 import Moon3Processor

    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(model, processor, image_rows(tmp_path), tmp_path)
    seen = []
    original = Moon3Processor.__call__

    def recording_call(self, images=None, text=None, **kwargs):
        if images is not None and text is not None:
            seen.append([len(image_list or []) for image_list in images])
        return original(self, images=images, text=text, **kwargs)

    vision_before = {n: p.clone() for n, p in model.backbone.model.visual.named_parameters()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Moon3Processor, "__call__", recording_call)
        trainer.train()
    assert trainer.state.global_step == 2
    assert any(0 in counts and 1 in counts for counts in seen), seen  # a batch mixed prompts with and without images
    assert any(not torch.equal(p, vision_before[n]) for n, p in model.backbone.model.visual.named_parameters())
    assert "contrastive/loss" in trainer.state.log_history[0]


def test_stage2_scores_a_text_only_batch_from_a_dataset_with_images(tiny_tokenizer, tmp_path):
    """A process batch without any image (TRL then passes images=None) next to one with images."""
    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(model, processor, image_rows(tmp_path), tmp_path)
    dataset = trainer.train_dataset
    for picked in ([2, 5], [0, 2]):  # text-only queries; image-only + text-only
        inputs = [dataset[i] for i in picked for _ in range(trainer.num_generations)]
        output = trainer._generate_and_score_completions(inputs)
        assert output["completion_ids"].shape[0] == len(inputs)
        assert ("pixel_values" in output) == (picked == [0, 2])


@pytest.mark.parametrize("photo_queries", [True, False])
def test_stage2_attribute_reward_leaves_photo_only_queries_out_when_asked(tiny_tokenizer, tmp_path, photo_queries):
    """`attribute_reward_photo_queries false`: photo-only queries get no attribute reward (NaN in TRL's log), photo+text
    and text queries keep it; by default every query gets it."""
    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(
        model,
        processor,
        image_rows(tmp_path),
        tmp_path,
        attribute_reward_weight=1.0,
        attribute_reward_photo_queries=photo_queries,
    )
    dataset = trainer.train_dataset
    inputs = [dataset[i] for i in (0, 1, 2) for _ in range(trainer.num_generations)]  # photo, photo+text, text
    trainer._generate_and_score_completions(inputs)
    logged = trainer._logs["rewards"]["attribute_reward"]
    scored = [not math.isnan(value) for value in logged]
    photo_only = [True] * 2 + [False] * 4
    assert scored == [photo_queries or not is_photo for is_photo in photo_only]
    assert all(not math.isnan(value) for value in trainer._logs["rewards"]["format_reward"])


def test_trl_generate_returns_images_then_tool_images(tiny_tokenizer, tmp_path):
    """`Moon3GRPOTrainer._generate` rewrites the images TRL's `_generate` returns second to last of its 8 values: check
    that place by what TRL returns for an image query and a text query (None or [] for the text one, the photo for the
    image one, no tool images), and that the override gives the text query []."""
    from PIL import Image
    from trl import GRPOTrainer
    from trl.data_utils import prepare_multimodal_messages

    model, processor = build_tiny(tiny_tokenizer)
    trainer = grpo_trainer(model, processor, image_rows(tmp_path), tmp_path)
    returned = []
    original = GRPOTrainer._generate

    def recording_generate(self, prompts):
        returned.append(original(self, prompts))
        return returned[-1]

    dataset = trainer.train_dataset
    inputs = [dataset[i] for i in (0, 2) for _ in range(trainer.num_generations)]  # image-only, text-only queries
    # the prompts as TRL's `_generate_and_score_completions` hands them to `_generate`
    prompts = [prepare_multimodal_messages(row["prompt"], images=row["images"]) for row in inputs]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GRPOTrainer, "_generate", recording_generate)
        ours = trainer._generate(prompts)
    (theirs,) = returned
    assert len(theirs) == 8 and len(ours) == 8
    images, tool_images = theirs[-2], theirs[-1]
    assert [bool(image_list) for image_list in images] == [True, True, False, False]
    assert all(isinstance(image, Image.Image) for image in images[0])
    assert not any(tool_images)
    assert ours[-2][2:] == [[], []] and ours[-2][:2] == images[:2]


def launch_tiny_grpo_on_two_processes(rows, tmp_path, steps: int, extra=()):
    """The tiny stage-2 recipe on two CPU processes over `rows` (written as JSONL), saving at the last step."""
    from tests.train.test_launch import launch

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    flags = ["--synthetic_rows", "0", "--dataset_name", str(data), "--output_dir", str(out)]
    flags += ["--max_steps", str(steps), "--save_steps", str(steps), *extra]
    launch("cpu_2proc.yaml", "train.grpo_contrastive", "train/recipes/tiny_grpo.yaml", *flags)
    return out


@pytest.mark.slow
def test_stage2_with_image_queries_runs_on_two_processes(tmp_path):
    from tests.train.test_launch import final_step

    out = launch_tiny_grpo_on_two_processes(image_rows(tmp_path, num_rows=8), tmp_path, steps=4)
    assert final_step(out) == 4 and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_stage2_direct_term_on_two_processes_with_photo_queries_and_text_products(tmp_path):
    """DDP searches unused parameters from its last forward (here the text-only products, which skip the vision
    tower that the photo queries used): without `find_unused_from_whole_loss` the backward fails with "Expected to
    mark a variable ready only once"."""
    from tests.train.test_launch import final_step

    rows = image_rows(tmp_path, num_rows=8)
    for row in rows:
        row["query"] = {"image": row["positive"].pop("images")[0]}  # photo queries, products without photos
    out = launch_tiny_grpo_on_two_processes(rows, tmp_path, steps=2, extra=["--direct_contrastive_weight", "1.0"])
    assert final_step(out) == 2 and (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------- KL to a reference model


def test_stage2_with_beta_trains_against_a_frozen_moon3_reference(tiny_tokenizer, tmp_path):
    model, processor = build_tiny(tiny_tokenizer)
    initial = {n: p.clone() for n, p in model.named_parameters()}
    trainer = grpo_trainer(model, processor, synthetic_rows(4), tmp_path, beta=0.5, max_steps=2)
    assert trainer.beta == 0.5 and trainer.args.beta == 0.5
    reference = trainer.ref_model
    assert reference is not None and reference is not model
    trainer.train()
    kl = [entry["kl"] for entry in trainer.state.log_history if "kl" in entry]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # policy == reference at step 1
    for name, parameter in reference.named_parameters():
        assert torch.equal(parameter, initial[name]), name
    assert any(not torch.equal(p, initial[n]) for n, p in model.named_parameters())


def test_sync_ref_model_without_beta_is_refused(tiny_tokenizer, tmp_path):
    model, processor = build_tiny(tiny_tokenizer)
    with pytest.raises(ValueError, match="sync_ref_model=True needs a separate reference model"):
        grpo_trainer(model, processor, synthetic_rows(4), tmp_path, sync_ref_model=True)
