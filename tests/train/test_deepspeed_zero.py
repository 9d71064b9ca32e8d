"""MOON3 under DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU processes (real gloo, `deepspeed.initialize`, spawned workers).

accelerate enables DeepSpeed only on accelerators; DeepSpeed itself runs ZeRO on the CPU (`DS_ACCELERATOR=cpu`, a torch
optimizer). Each test spawns two processes that build the same tiny model (same seed), shard it with
`deepspeed.initialize`, run the MOON3 pieces ZeRO partitioning can break and compare with an unsharded copy of the same
model fed the global batch (what one process would compute):

- FIRE hooks, fusion and the `<emb>` readout: direct-mode embeddings, images on rank 0 and none on rank 1;
- reason-mode generation (`embed_with_reasoning`, `synced_gpus`);
- stage-2 rollouts where every completion of rank 0 is cut off (all need the extra decode step) and every completion of
  rank 1 ends at once, so `synced_gpus` feeds its `<emb>` back (none needs it); then the stage-2 loss (fused policy
  forward: contrastive InfoNCE gathered across processes + a log-prob term) and its gradients against the global
  batch on one unsharded model, to 1e-5;
- one stage-1 gradient-caching step (`Moon3ContrastiveTrainer.training_step`, chunks, rank 1 with fewer chunks) against
  the one-pass step: same parameters after the optimizer step.

Slow: each test starts two Python processes that import DeepSpeed (the first run on a machine also JIT-builds
DeepSpeed's CPU shared-memory op, about a minute).
"""

from __future__ import annotations

import copy
import datetime
import functools
import os
import socket
import traceback

import pytest
import torch

pytest.importorskip("deepspeed")

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_two_processes(scenario, stage: int, tmp_path) -> None:
    """Spawn 2 gloo processes running `scenario(rank, stage)`; fail with each rank's traceback."""
    import torch.multiprocessing as mp

    os.environ["DS_ACCELERATOR"] = "cpu"  # inherited by the spawned workers before they import DeepSpeed
    mp.start_processes(
        _worker, args=(scenario, stage, free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True
    )
    errors = sorted(tmp_path.glob("error-*.txt"))
    assert not errors, "\n".join(path.read_text() for path in errors)


def _worker(rank: int, scenario, stage: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import deepspeed

    # a collective mismatch fails within minutes instead of gloo's 30-minute default
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=180))
    try:
        scenario(rank, stage)
    except BaseException:
        with open(os.path.join(out, f"error-{rank}.txt"), "w") as handle:
            handle.write(f"rank {rank}:\n{traceback.format_exc()}")
        raise


# --------------------------------------------------------------------------- shared pieces


def tiny_model():
    """The same tiny MOON3 on every process, with FIRE and fusion moved off their zero init (so they matter)."""
    from tests.conftest import TINY_CORPUS, build_tiny
    from train.build_tokenizer import train_tokenizer

    model, processor = build_tiny(train_tokenizer(TINY_CORPUS, vocab_size=400))
    with torch.no_grad():
        model.fusion.out_proj.weight.normal_(std=0.05, generator=torch.Generator().manual_seed(1))
        for block in model.fire.values():
            block.gamma.fill_(0.1)
    return model.train(), processor


def shard(model, stage: int, lr: float = 0.0):
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        # persistence 0: ZeRO-3 would otherwise keep the tiny model's small parameters whole on every process, and no
        # forward would all-gather anything
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def all_ranks(value):
    """[value of rank 0, value of rank 1] (any picklable object)."""
    import torch.distributed as dist

    values = [None, None]
    dist.all_gather_object(values, value)
    return values


def image(colour):
    from PIL import Image

    return Image.new("RGB", (40, 40), colour)


def products(rank: int) -> list[dict]:
    """Rank 0's products have images, rank 1's none."""
    if rank == 0:
        return [
            {"title": "Navy shirt", "attributes": {"colour": "Navy"}, "images": [image((9, 9, 200))]},
            {"title": "Red shoes", "images": [image((200, 9, 9))]},
        ]
    return [{"title": "Black watch", "attributes": {"type": "Watch"}}, {"title": "Green bag"}]


def queries(rank: int) -> list:
    if rank == 0:
        return [{"text": "navy shirt", "image": image((9, 9, 200))}, "red running shoes"]
    return ["black watch", "green bag for women"]


# --------------------------------------------------------------------------- ZeRO-3: model pieces and stage 2


def zero3_model_pieces_and_stage2(rank: int, stage: int) -> None:
    from train.grpo_embedding import GenerationRecorder, completion_embeddings, forward_embeddings
    from train.losses import Moon3InfoNCELoss
    from train.trainer import install_fused_policy_head

    model, processor = tiny_model()
    install_fused_policy_head(model)
    reference = copy.deepcopy(model).eval()  # unsharded: what one process computes
    engine = shard(model, stage)
    module = engine.module.eval()
    config = module.config

    # FIRE hooks, fusion, <emb> readout (direct mode), images on one rank only
    with torch.no_grad():
        direct = engine(**processor(products=products(rank), mode="direct"), return_embeddings=True).embeddings
        expected = reference(**processor(products=products(rank), mode="direct"), return_embeddings=True).embeddings
    torch.testing.assert_close(direct, expected, **TOLERANCE)

    # reason-mode generation (the inference path), ranks finishing at different steps
    batch = processor(queries=queries(rank), mode="reason")
    with torch.no_grad():
        reasoned = module.embed_with_reasoning(**batch, max_reasoning_tokens=3 + rank, synced_gpus=True)
        expected = reference.embed_with_reasoning(**batch, max_reasoning_tokens=3 + rank)
    torch.testing.assert_close(reasoned["embeddings"], expected["embeddings"], **TOLERANCE)

    # stage-2 rollout: rank 0's completions are all cut off, rank 1's all end at once (their <emb> is fed back by
    # synced_gpus decoding), then every rank runs the same extra decode step
    prompt_width = batch["input_ids"].shape[1]
    rule = (
        {"suppress_tokens": [config.emb_token_id]} if rank == 0 else {"sequence_bias": {(config.emb_token_id,): 50.0}}
    )
    with torch.no_grad(), GenerationRecorder(module) as recorder:
        generated = module.generate(
            **batch,
            max_new_tokens=4,
            do_sample=False,
            eos_token_id=config.emb_token_id,
            pad_token_id=config.pad_token_id,
            synced_gpus=True,
            **rule,
        )
        completions = [row.tolist() for row in generated[:, prompt_width:]]
        completions = [
            row[: row.index(config.emb_token_id) + 1] if config.emb_token_id in row else row for row in completions
        ]
        if rank == 0:
            assert all(len(row) == 4 and config.emb_token_id not in row for row in completions), completions
        else:
            assert completions == [[config.emb_token_id]] * 2, completions
            assert recorder.prompt_width in recorder.states  # <emb> already fed back: no row needs the extra step
        rollout = completion_embeddings(module, recorder, completions)
    prompt_ids = [
        ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    fields = {key: batch[key] for key in ("pixel_values", "image_grid_thw") if key in batch}
    torch.testing.assert_close(
        rollout, forward_embeddings(reference, prompt_ids, fields, completions, torch.device("cpu")), **TOLERANCE
    )

    # stage-2 loss and gradients: sharded on 2 processes vs the global batch on one unsharded model
    module.train()
    reference.train()
    loss_fn = Moon3InfoNCELoss(temperature=0.1, matryoshka_dims=[8, 16, 32], gather_across_devices=True)
    local = policy_inputs(processor, prompt_ids, fields, completions, config)
    with torch.no_grad():
        docs = engine(**processor(products=products(rank), mode="direct"), return_embeddings=True).embeddings
    keys = torch.tensor([10 * rank + 1, 10 * rank + 2])
    advantages = torch.tensor([1.0, -1.0]) * (1 + rank)
    loss = stage2_loss(engine, local, docs, keys, advantages, loss_fn)
    engine.backward(loss)
    from deepspeed.utils import safe_get_full_grad

    sharded_grads = {name: safe_get_full_grad(p).clone() for name, p in module.named_parameters()}
    sharded_loss = sum(all_ranks(loss.item())) / 2

    everything = all_ranks((prompt_ids, completions, keys, advantages))
    global_prompts = [p for prompts, *_ in everything for p in prompts]
    global_completions = [c for _, completions_, *_ in everything for c in completions_]
    global_fields = merged_fields(processor, [queries(0), queries(1)])
    global_docs = torch.cat(
        [
            reference(**processor(products=products(r), mode="direct"), return_embeddings=True).embeddings
            for r in (0, 1)
        ]
    ).detach()
    global_loss = stage2_loss(
        reference,
        policy_inputs(processor, global_prompts, global_fields, global_completions, config),
        global_docs,
        torch.cat([k for _, _, k, _ in everything]),
        torch.cat([a for *_, a in everything]),
        Moon3InfoNCELoss(temperature=0.1, matryoshka_dims=[8, 16, 32], gather_across_devices=False),
    )
    global_loss.backward()
    assert abs(sharded_loss - global_loss.item()) < 1e-5, (sharded_loss, global_loss.item())
    checked = 0
    for name, param in reference.named_parameters():
        if param.grad is None:
            continue
        torch.testing.assert_close(sharded_grads[name], param.grad, **TOLERANCE, msg=name)
        checked += 1
    names = [name for name, p in reference.named_parameters() if p.grad is not None]
    assert any(n.startswith("fire.") for n in names) and any(n.startswith("fusion.") for n in names)
    assert any(".visual." in n for n in names) and checked > 10


def merged_fields(processor, query_lists) -> dict:
    """pixel_values / image_grid_thw of the queries of every rank, in rank order (what one process would batch)."""
    fields = [processor(queries=q, mode="reason") for q in query_lists]
    merged = {}
    for key in ("pixel_values", "image_grid_thw"):
        parts = [f[key] for f in fields if key in f]
        if parts:
            merged[key] = torch.cat(parts)
    return merged


def policy_inputs(processor, prompt_ids, fields, completions, config) -> dict:
    """Left-padded prompt + completion ids with labels on the completion tokens (TRL's layout)."""
    sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completions, strict=True)]
    width = max(len(s) for s in sequences)
    input_ids = torch.tensor([[config.pad_token_id] * (width - len(s)) + s for s in sequences])
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    labels = torch.full_like(input_ids, -100)
    for row, completion in enumerate(completions):
        labels[row, width - len(completion) :] = torch.tensor(completion)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": ((input_ids == config.image_token_id) & attention_mask.bool()).int(),
        "labels": labels[:, 1:],
    }
    inputs.update(fields)
    return inputs


def stage2_loss(model, inputs, docs, keys, advantages, loss_fn):
    """InfoNCE on the completions' embeddings (from the fused policy forward) minus the advantage-weighted log-probs."""
    outputs = model(**inputs, fused_lm_head=True)
    contrastive = loss_fn(outputs.embeddings, docs, doc_keys=keys)
    policy = -(outputs.log_probs.sum(dim=1) * advantages).mean()
    return contrastive + 0.1 * policy


# --------------------------------------------------------------------------- stage 1: gradient caching


def stage1_gradient_caching(rank: int, stage: int) -> None:
    from accelerate.utils.deepspeed import DeepSpeedEngineWrapper
    from datasets import Dataset
    from deepspeed import zero

    from train.config import Moon3ContrastiveConfig
    from train.contrastive_trainer import Moon3ContrastiveTrainer
    from train.data import Moon3PairCollator, synthetic_rows
    from train.losses import Moon3InfoNCELoss

    base, processor = tiny_model()
    rows = synthetic_rows(8)[4 * rank : 4 * rank + 4]
    if rank == 1:  # no reasoning targets: fewer sequences, so fewer chunks than rank 0
        rows = [{key: value for key, value in row.items() if key != "reasoning"} for row in rows]
    after = {}
    for chunk_size in (0, 3):
        model = copy.deepcopy(base)
        engine = shard(model, stage, lr=1.0)
        args = Moon3ContrastiveConfig(
            output_dir=f"/tmp/moon3-ds-{os.getpid()}",
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            per_device_train_batch_size=4,
            embedding_chunk_size=chunk_size,
            sft_weight=0.5,
        )
        trainer = Moon3ContrastiveTrainer(
            model=engine.module,
            args=args,
            train_dataset=Dataset.from_list(rows),
            data_collator=Moon3PairCollator(processor, chunk_size),
            processing_class=processor,
            loss_fn=Moon3InfoNCELoss(temperature=0.1, matryoshka_dims=[8, 16, 32], gather_across_devices=True),
        )
        # The Trainer's accelerator here is the CPU one (accelerate enables DeepSpeed on accelerators only); point its
        # backward at accelerate's own DeepSpeed wrapper, which Accelerator.backward calls under DeepSpeed.
        wrapper = DeepSpeedEngineWrapper(engine)
        trainer.accelerator.backward = functools.partial(wrapper.backward, sync_gradients=True)
        trainer.current_gradient_accumulation_steps = 1
        batch = Moon3PairCollator(processor, chunk_size)(rows)
        if chunk_size:
            assert len(batch["chunks"]) == (4 if rank == 0 else 3)  # 4 + 4 + 4 and 4 + 4 sequences
        trainer.training_step(engine, batch)  # one step: SGD with lr 1 moves each parameter by its gradient
        params = list(engine.module.named_parameters())
        with zero.GatheredParameters([p for _, p in params], enabled=stage == 3):
            after[chunk_size] = {name: p.detach().clone() for name, p in params}
    moved = 0
    for name, value in after[0].items():
        torch.testing.assert_close(after[3][name], value, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(value, dict(base.named_parameters())[name].detach()))
    assert moved > 10


@pytest.mark.slow
def test_zero3_fire_fusion_readout_generation_and_stage2_match_one_unsharded_process(tmp_path):
    run_on_two_processes(zero3_model_pieces_and_stage2, 3, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_stage1_gradient_caching_under_zero_matches_the_one_pass_step(stage, tmp_path):
    run_on_two_processes(stage1_gradient_caching, stage, tmp_path)
