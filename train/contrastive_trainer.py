"""Stage 1 (cold start): `Moon3ContrastiveTrainer`, a `transformers.Trainer` with InfoNCE + SFT and gradient caching.

Gradient caching (GradCache, Gao et al. 2021; sentence-transformers' CachedMNRL) makes the contrastive batch
independent of memory: (1) embed every sequence without gradient, chunk by chunk; (2) compute the InfoNCE loss on
those embeddings and its gradient with respect to them; (3) re-run each chunk with gradient and back-propagate
`<embeddings, cached gradient>` plus the chunk's share of the SFT loss. Peak memory is one chunk's activations.
The result equals the full-batch gradient (tested) as long as the forward is deterministic (no dropout: the
Qwen-VL configs have none).

Only `training_step` is overridden; the loop, optimizer, checkpoints and logging are the Trainer's. With one chunk
(`embedding_chunk_size: 0`) the step is one forward with gradient, and the SFT logits cover only the positions that
predict a reasoning token (the last few), not every position.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.loss.loss_utils import ForCausalLMLoss

from train.checkpointing import CheckpointMixin
from train.distributed import backward_deferring_sync, is_deepspeed_engine, max_across_processes
from train.losses import Moon3InfoNCELoss, in_batch_accuracy
from train.photo_attributes import PhotoAttributeHead, mean_image_features

logger = logging.getLogger(__name__)

# Keys of a collated chunk that are targets, not model inputs.
TARGET_KEYS = frozenset({"labels", "attribute_labels"})


def model_inputs_of(chunk) -> dict:
    """A collated chunk without its targets (`labels`, `attribute_labels`): what the model's forward takes."""
    return {key: value for key, value in chunk.items() if key not in TARGET_KEYS}


def check_finite(value: torch.Tensor, term: str, step: int) -> None:
    """Raise `FloatingPointError` naming the step and the loss term when `value` is NaN or inf."""
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"Non-finite {term} loss ({value.item()}) at step {step}. Lower the learning rate, check the data of "
            "this step, or raise the contrastive temperature; set stop_on_nonfinite_loss=False to continue anyway."
        )


def split_embeddings(embeddings: torch.Tensor, num_queries: int, doc_keys: torch.Tensor):
    """Tensor[B + N + S, E] in the collator's order -> (queries Tensor[B, E], documents Tensor[N, E]).

    The S trailing rows are the reason-mode SFT sequences: they carry the SFT loss only, never an embedding that the
    contrastive loss sees (their gold reasoning would give the answer away, see `Moon3PairCollator`).
    """
    return embeddings[:num_queries], embeddings[num_queries : num_queries + len(doc_keys)]


def reasoned_split(embeddings: torch.Tensor, num_queries: int, doc_keys: torch.Tensor, reasoned_rows: torch.Tensor):
    """The reasoned InfoNCE term's inputs: (reasoned queries Tensor[R, E], documents Tensor[N, E], keys Tensor[N]).

    The R reasoned queries are the last R rows of `embeddings` (`Moon3PairCollator(reasoned_queries=True)`); the
    documents are reordered so that the positives of those R rows come first, as `Moon3InfoNCELoss` reads them.
    """
    num_rows = len(reasoned_rows)
    documents = embeddings[num_queries : num_queries + len(doc_keys)]
    reasoned = embeddings[embeddings.shape[0] - num_rows :]
    rest = torch.ones(len(doc_keys), dtype=torch.bool, device=doc_keys.device)
    rest[reasoned_rows.to(doc_keys.device)] = False
    order = torch.cat([reasoned_rows.to(doc_keys.device), rest.nonzero().squeeze(1)])  # (N,)
    return reasoned, documents[order.to(documents.device)], doc_keys[order]


class Moon3ContrastiveTrainer(CheckpointMixin, Trainer):
    """Trainer for stage 1: `loss = InfoNCE(queries, products) + sft_weight * SFT(reasoning targets)`, plus
    `reasoned_contrastive_weight * InfoNCE(queries after their reasoning, products)` when that weight is > 0, plus
    `photo_attribute_weight * CE(photo attribute head)` when that weight is > 0 (`train.photo_attributes`).

    Args:
        loss_fn (`Moon3InfoNCELoss`): the contrastive loss.
        attribute_head (`PhotoAttributeHead`, *optional*): the photo attribute head, required when
            `args.photo_attribute_weight > 0`; its fields are the collator's `attribute_classes`, in order. It is
            trained by the same optimizer (its own parameter group) and is not saved.
        *args, **kwargs: as for `transformers.Trainer`; `args` is a `Moon3ContrastiveConfig` and `data_collator` a
            `Moon3PairCollator` (chunked with `args.embedding_chunk_size`).
    """

    def __init__(self, *args, loss_fn: Moon3InfoNCELoss, attribute_head: PhotoAttributeHead | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self._moon3_metrics = defaultdict(list)
        self.attribute_head = self._check_attribute_head(attribute_head)

    def _check_attribute_head(self, head: PhotoAttributeHead | None) -> PhotoAttributeHead | None:
        if self.args.photo_attribute_weight <= 0:
            return None
        if head is None:
            raise ValueError("photo_attribute_weight > 0 needs attribute_head=PhotoAttributeHead(...).")
        if self.args.world_size > 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "photo_attribute_weight > 0 runs on one process only (the head is outside the model, so DDP, DeepSpeed "
                "and FSDP would not reduce its gradients); it was measured on one CPU process (docs/reasoning.md). "
                "Launch one process or set photo_attribute_weight 0."
            )
        model = self.accelerator.unwrap_model(self.model)
        if getattr(model, "fusion", None) is None and getattr(model, "fire", None) is None:
            raise ValueError(
                "photo_attribute_weight > 0 reads the visual tokens from the raw signals, which the model computes "
                "only with the fusion or FIRE module on (use_fusion / use_fire in its config)."
            )
        return head.to(self.args.device)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.attribute_head is not None and not any(
            group.get("moon3_attribute_head") for group in optimizer.param_groups
        ):
            # Same learning rate, schedule and weight decay as the model; added before the scheduler is built.
            optimizer.add_param_group(
                {
                    "params": list(self.attribute_head.parameters()),
                    "weight_decay": self.args.weight_decay,
                    "moon3_attribute_head": True,
                }
            )
        return optimizer

    def contrastive_loss(self, embeddings, num_queries, doc_keys, reasoned_rows) -> torch.Tensor:
        """InfoNCE of the direct-mode queries, plus the weighted reasoned term (see `reasoned_split`)."""
        loss = self.loss_fn(*split_embeddings(embeddings, num_queries, doc_keys), doc_keys=doc_keys)
        weight = self.args.reasoned_contrastive_weight
        if weight <= 0:
            return loss
        if len(reasoned_rows) == 0:
            # No reasoning target in this batch on this process: the same collectives as the others, no gradient.
            return loss + 0.0 * self.loss_fn(*split_embeddings(embeddings, num_queries, doc_keys), doc_keys=doc_keys)
        queries, documents, keys = reasoned_split(embeddings, num_queries, doc_keys, reasoned_rows)
        reasoned = self.loss_fn(queries, documents, doc_keys=keys)
        # `contrastive/loss` is the weighted sum of both terms; these two are its parts
        self._record("contrastive/direct_loss", loss.item())
        self._record("contrastive/reasoned_loss", reasoned.item())
        self._record(
            "retrieval/reasoned_in_batch_accuracy", in_batch_accuracy(queries.detach(), documents.detach(), keys)
        )
        return loss + weight * reasoned

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        chunks, num_queries, doc_keys = inputs["chunks"], inputs["num_queries"], inputs["doc_keys"]
        reasoned_rows = inputs.get("reasoned_rows", doc_keys[:0])
        step = self.state.global_step + 1
        scale = 1.0 / self.current_gradient_accumulation_steps
        # Every process runs the same number of chunk forwards and backwards (ZeRO-3 gathers parameters in each, ZeRO-2/3
        # reduce gradients in each): a process with fewer chunks (fewer SFT rows) repeats its last one with weight 0.
        num_chunks = max_across_processes(len(chunks))
        if num_chunks == 1:
            return self._one_pass_step(model, chunks[0], num_queries, doc_keys, reasoned_rows, step, scale)
        padding = [chunks[-1]] * (num_chunks - len(chunks))
        cached = self._embed_without_grad(chunks, padding).requires_grad_()  # (B + N, E)
        contrastive = self.contrastive_loss(cached, num_queries, doc_keys, reasoned_rows)
        if self.args.stop_on_nonfinite_loss:
            check_finite(contrastive.detach(), "contrastive (InfoNCE)", step)
        contrastive.backward()
        cached_grad = cached.grad * scale  # (B + N, E)

        total_label_tokens = sum(int((chunk["labels"] != -100).sum()) for chunk in chunks)
        total_attribute_labels = self._attribute_label_count(chunks)
        sft_total = torch.zeros((), device=cached.device)
        attribute_total = torch.zeros((), device=cached.device)
        start = 0
        for index, chunk in enumerate(chunks + padding):
            if index < len(chunks):
                size = chunk["input_ids"].shape[0]
                surrogate, sft_part, attribute_part = self._chunk_surrogate(
                    model, chunk, cached_grad[start : start + size], total_label_tokens, total_attribute_labels
                )
                sft_total, start = sft_total + sft_part, start + size
                attribute_total = attribute_total + attribute_part
            else:
                embeddings, sft = self._forward_chunk(model, chunk)
                surrogate = 0.0 * (embeddings.sum() + sft)  # same forward and backward, no gradient
            if index == num_chunks - 1:
                self.accelerator.backward(surrogate, **self._backward_kwargs(model))
            else:
                backward_deferring_sync(model, surrogate, self.accelerator.backward)
        if self.args.stop_on_nonfinite_loss:
            check_finite(sft_total, "SFT (reasoning targets)", step)
            check_finite(attribute_total, "photo attribute", step)
        self._record_step(contrastive.item(), sft_total.item(), cached, num_queries, doc_keys)
        self._record_attribute_loss(attribute_total)
        total = contrastive.detach() + self.args.sft_weight * sft_total
        return (total + self.args.photo_attribute_weight * attribute_total) * scale

    def _one_pass_step(self, model, chunk, num_queries, doc_keys, reasoned_rows, step, scale) -> torch.Tensor:
        """Without gradient caching (one chunk), one forward with gradient gives the same gradient as the cached path
        and saves its no-gradient pass."""
        embeddings, sft, attributes = self._forward_chunk_terms(model, chunk)  # (B + N + S + R, E), scalar, scalar
        contrastive = self.contrastive_loss(embeddings, num_queries, doc_keys, reasoned_rows)
        attributes = attributes / max(1, self._attribute_label_count([chunk]))
        if self.args.stop_on_nonfinite_loss:
            check_finite(contrastive.detach(), "contrastive (InfoNCE)", step)
            check_finite(sft.detach(), "SFT (reasoning targets)", step)
            check_finite(attributes.detach(), "photo attribute", step)
        loss = contrastive + self.args.sft_weight * sft + self.args.photo_attribute_weight * attributes
        self._record_attribute_loss(attributes)
        self.accelerator.backward(loss * scale, **self._backward_kwargs(model))
        self._record_step(contrastive.item(), sft.item(), embeddings.detach(), num_queries, doc_keys)
        return loss.detach() * scale

    def _record_step(self, contrastive: float, sft: float, embeddings, num_queries, doc_keys) -> None:
        self._record("contrastive/loss", contrastive)
        self._record("sft/loss", sft)
        self._record(
            "retrieval/in_batch_accuracy",
            in_batch_accuracy(*split_embeddings(embeddings, num_queries, doc_keys), doc_keys),
        )

    def _chunk_surrogate(self, model, chunk, embedding_grad, total_label_tokens, total_attribute_labels=0):
        """One chunk's forward with gradient: `<embeddings, cached grad> + sft_weight * its share of the SFT loss
        + photo_attribute_weight * its share of the photo attribute loss`."""
        num_labels = int((chunk["labels"] != -100).sum())
        embeddings, sft, attributes = self._forward_chunk_terms(model, chunk)
        surrogate = (embeddings * embedding_grad).sum()
        sft_part = sft * (num_labels / max(1, total_label_tokens))  # token-weighted share of the batch mean
        attribute_part = attributes / max(1, total_attribute_labels)  # this chunk's share of the batch mean
        weighted = self.args.sft_weight * sft_part + self.args.photo_attribute_weight * attribute_part
        surrogate = surrogate + weighted / self.current_gradient_accumulation_steps
        return surrogate, sft_part.detach(), attribute_part.detach()

    def _forward_chunk(self, model, chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings at `<emb>` (Tensor[B, E]) and the mean SFT loss over the chunk's labelled tokens (0 if none)."""
        embeddings, sft, _ = self._forward_chunk_terms(model, chunk)
        return embeddings, sft

    def _forward_chunk_terms(self, model, chunk) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_forward_chunk`'s embeddings and SFT loss, and the photo attribute head's summed cross-entropy over the
        chunk's labelled (photo, field) pairs (0 without the head).

        Only positions that predict a labelled token need logits. Rows are left-padded and every reasoning target
        ends the sequence, so the last `keep` positions hold them all: the LM head runs over `keep` positions
        instead of all L (most of a stage-1 step's cost at a small hidden size), with the same loss."""
        labels = chunk["labels"]
        labelled = labels != -100  # (B, L)
        model_inputs = model_inputs_of(chunk)
        if self.args.sft_weight <= 0:
            outputs = model(**model_inputs, return_embeddings=True)
            sft = torch.zeros((), device=labels.device)
        elif not bool(labelled.any()):
            # The LM head still runs (one position, weight 0): a chunk without SFT rows on one process must call the
            # same modules as the others (ZeRO-3 gathers each module's parameters collectively).
            outputs = model(**model_inputs, logits_to_keep=1, return_embeddings=True)
            sft = 0.0 * outputs.logits.float().sum()
        else:
            first = int(labelled.any(dim=0).nonzero()[0])
            keep = labels.shape[1] - first + 1
            outputs = model(**model_inputs, logits_to_keep=keep, return_embeddings=True)
            sft = ForCausalLMLoss(outputs.logits, labels[:, -keep:], vocab_size=outputs.logits.shape[-1])
        return outputs.embeddings, sft, self._attribute_loss_sum(outputs, chunk)

    def _attribute_loss_sum(self, outputs, chunk) -> torch.Tensor:
        """Summed cross-entropy of the photo attribute head over the chunk's labelled (photo, field) pairs."""
        if self.attribute_head is None:
            return torch.zeros((), device=outputs.embeddings.device)
        if "attribute_labels" not in chunk:
            raise ValueError(
                "photo_attribute_weight > 0 but the batch has no attribute_labels: build the collator with "
                "Moon3PairCollator(..., attribute_classes=train.data.attribute_classes(rows, fields))."
            )
        signals = outputs.raw_signals
        pooled = mean_image_features(signals.features, signals.image_mask)  # (B, D)
        labels = chunk["attribute_labels"]  # (B, F)
        loss_sum, count, correct = self.attribute_head.loss_terms(pooled, labels)
        per_field = (labels != -100).sum(dim=0)  # (F,)
        for name, right, seen in zip(self.attribute_head.fields, correct.tolist(), per_field.tolist(), strict=True):
            if seen:
                self._record(f"photo_attributes/accuracy_{name}", right / seen)
        return loss_sum

    @staticmethod
    def _attribute_label_count(chunks) -> int:
        return sum(int((chunk["attribute_labels"] != -100).sum()) for chunk in chunks if "attribute_labels" in chunk)

    def _record_attribute_loss(self, value: torch.Tensor) -> None:
        if self.attribute_head is not None:
            self._record("photo_attributes/loss", float(value.detach()))

    @torch.no_grad()
    def _embed_without_grad(self, chunks, padding=()) -> torch.Tensor:
        """Embeddings of every chunk (Tensor[B + N, E]); the `padding` chunks run too (same forwards on every
        process) and are dropped."""
        module = self.accelerator.unwrap_model(self.model_wrapped)
        embeddings = []
        for chunk in [*chunks, *padding]:
            embeddings.append(module(**model_inputs_of(chunk), return_embeddings=True).embeddings)
        return torch.cat(embeddings[: len(chunks)]).detach()  # (B + N, E)

    @staticmethod
    def _backward_kwargs(model) -> dict:
        # The step's loss is already divided by the accumulation steps; DeepSpeed's backward would divide again
        # (transformers.Trainer passes the same flag under DeepSpeed).
        return {"scale_wrt_gas": False} if is_deepspeed_engine(model) else {}

    def _record(self, name: str, value: float) -> None:
        self._moon3_metrics[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._moon3_metrics and "loss" in logs:
            logs.update({name: sum(values) / len(values) for name, values in self._moon3_metrics.items()})
            self._moon3_metrics.clear()
        super().log(logs, start_time)
