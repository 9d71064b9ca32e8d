"""Stage 1 (cold start): `Moon3ContrastiveTrainer`, a `transformers.Trainer` with InfoNCE + SFT and gradient caching.

Gradient caching (GradCache, Gao et al. 2021; sentence-transformers' CachedMNRL) makes the contrastive batch
independent of memory: (1) embed every sequence without gradient, chunk by chunk; (2) compute the InfoNCE loss on
those embeddings and its gradient with respect to them; (3) re-run each chunk with gradient and back-propagate
`<embeddings, cached gradient>` plus the chunk's share of the SFT loss. Peak memory is one chunk's activations.
The result equals the full-batch gradient (tested) as long as the forward is deterministic (no dropout: the
Qwen-VL configs have none).

Only `training_step` is overridden; the loop, optimizer, checkpoints and logging are the Trainer's.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict

import torch
from transformers import Trainer

from train.losses import Moon3InfoNCELoss, in_batch_accuracy

logger = logging.getLogger(__name__)


def check_finite(value: torch.Tensor, term: str, step: int) -> None:
    """Raise `FloatingPointError` naming the step and the loss term when `value` is NaN or inf."""
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"Non-finite {term} loss ({value.item()}) at step {step}. Lower the learning rate, check the data of "
            "this step, or raise the contrastive temperature; set stop_on_nonfinite_loss=False to continue anyway."
        )


class Moon3ContrastiveTrainer(Trainer):
    """Trainer for stage 1: `loss = InfoNCE(queries, products) + sft_weight * SFT(reasoning targets)`.

    Args:
        loss_fn (`Moon3InfoNCELoss`): the contrastive loss.
        *args, **kwargs: as for `transformers.Trainer`; `args` is a `Moon3ContrastiveConfig` and `data_collator` a
            `Moon3PairCollator` (chunked with `args.embedding_chunk_size`).
    """

    def __init__(self, *args, loss_fn: Moon3InfoNCELoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self._moon3_metrics = defaultdict(list)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        chunks, num_queries, doc_keys = inputs["chunks"], inputs["num_queries"], inputs["doc_keys"]
        step = self.state.global_step + 1
        scale = 1.0 / self.current_gradient_accumulation_steps

        cached = self._embed_without_grad(chunks).requires_grad_()  # (B + N, E)
        contrastive = self.loss_fn(cached[:num_queries], cached[num_queries:], doc_keys=doc_keys)
        if self.args.stop_on_nonfinite_loss:
            check_finite(contrastive.detach(), "contrastive (InfoNCE)", step)
        contrastive.backward()
        cached_grad = cached.grad * scale  # (B + N, E)

        total_label_tokens = sum(int((chunk["labels"] != -100).sum()) for chunk in chunks)
        sft_total = torch.zeros((), device=cached.device)
        start = 0
        for index, chunk in enumerate(chunks):
            size = chunk["input_ids"].shape[0]
            sync = contextlib.nullcontext() if index == len(chunks) - 1 else self._no_sync(model)
            with sync:
                surrogate, sft_part = self._chunk_surrogate(model, chunk, cached_grad[start : start + size], total_label_tokens)
                self.accelerator.backward(surrogate)
            sft_total = sft_total + sft_part
            start += size
        if self.args.stop_on_nonfinite_loss:
            check_finite(sft_total, "SFT (reasoning targets)", step)

        self._record("contrastive/loss", contrastive.item())
        self._record("sft/loss", sft_total.item())
        self._record("retrieval/in_batch_accuracy", in_batch_accuracy(cached[:num_queries], cached[num_queries:], doc_keys))
        return (contrastive.detach() + self.args.sft_weight * sft_total) * scale

    def _chunk_surrogate(self, model, chunk, embedding_grad, total_label_tokens):
        """One chunk's forward with gradient: `<embeddings, cached grad> + sft_weight * its share of the SFT loss`."""
        labels = chunk["labels"]
        num_labels = int((labels != -100).sum())
        use_sft = self.args.sft_weight > 0 and num_labels > 0
        model_inputs = {key: value for key, value in chunk.items() if key != "labels"}
        outputs = model(**model_inputs, labels=labels if use_sft else None, return_embeddings=True)
        surrogate = (outputs.embeddings * embedding_grad).sum()
        sft_part = torch.zeros((), device=embedding_grad.device)
        if use_sft:
            sft_part = outputs.loss * (num_labels / total_label_tokens)  # token-weighted share of the batch mean
            surrogate = surrogate + self.args.sft_weight * sft_part / self.current_gradient_accumulation_steps
        return surrogate, sft_part.detach()

    @torch.no_grad()
    def _embed_without_grad(self, chunks) -> torch.Tensor:
        module = self.accelerator.unwrap_model(self.model_wrapped)
        embeddings = []
        for chunk in chunks:
            model_inputs = {key: value for key, value in chunk.items() if key != "labels"}
            embeddings.append(module(**model_inputs, return_embeddings=True).embeddings)
        return torch.cat(embeddings).detach()  # (B + N, E)

    @staticmethod
    def _no_sync(model):
        # DDP all-reduces on every backward; only the last chunk's backward should do it.
        return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()

    def _record(self, name: str, value: float) -> None:
        self._moon3_metrics[name].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._moon3_metrics and "loss" in logs:
            logs.update({name: sum(values) / len(values) for name, values in self._moon3_metrics.items()})
            self._moon3_metrics.clear()
        super().log(logs, start_time)
