"""Contrastive losses for MOON3 training.

Shape letters: B queries on this process, N documents on this process (B positives first, then hard negatives),
E embedding dim, W world size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from train.distributed import gather_no_grad, gather_with_grad


class Moon3InfoNCELoss(nn.Module):
    r"""
    InfoNCE between queries and documents, with in-batch negatives gathered across processes, hard negatives and
    Matryoshka prefixes.

    In plain terms: query `i`'s positive is document `i`; every other document of the batch (on every process) and
    every hard negative is a negative. The loss is the cross-entropy of picking the positive among all documents from
    `cosine / temperature`. With `matryoshka_dims`, the same loss is computed on each prefix of the embeddings
    (re-normalised) and averaged, so the first `d` dimensions also work as an embedding on their own. This is the
    contrastive objective of MOON3.0 (arXiv 2604.00513), and the MNRL/CLIP objective of sentence-transformers and
    open_clip.

    Documents that are the same product as a query's positive (`doc_keys` equal to the positive's key), other than
    the positive itself, are masked out: with G completions per query (GRPO) or several queries per product, they
    would otherwise count as negatives of themselves.

    Args:
        temperature (`float`, defaults to 0.05):
            Cosine similarities are divided by it (lower = sharper).
        matryoshka_dims (`Sequence[int]`, *optional*):
            Prefix sizes to train; `None` uses the full embedding only.
        matryoshka_weights (`Sequence[float]`, *optional*):
            Weight of each prefix; defaults to equal weights. The weighted losses are averaged.
        gather_across_devices (`bool`, defaults to True):
            Gather the documents of every process (with gradient) as extra negatives.

    Example:

    ```python
    >>> loss_fn = Moon3InfoNCELoss(temperature=0.05, matryoshka_dims=[64, 128, 512])
    >>> loss = loss_fn(query_embeddings, torch.cat([positive_embeddings, negative_embeddings]))
    ```
    """

    def __init__(
        self,
        temperature: float = 0.05,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
        gather_across_devices: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (it divides the cosine similarities), got {temperature}.")
        dims = list(matryoshka_dims) if matryoshka_dims else None
        if dims is not None and (any(d <= 0 for d in dims) or dims != sorted(set(dims))):
            raise ValueError(f"matryoshka_dims must be strictly increasing positive sizes, got {matryoshka_dims}.")
        weights = list(matryoshka_weights) if matryoshka_weights else None
        if weights is not None and (dims is None or len(weights) != len(dims)):
            raise ValueError(
                f"matryoshka_weights has {len(weights)} values but matryoshka_dims is {dims}; give one weight per dim."
            )
        self.temperature = float(temperature)
        self.matryoshka_dims = dims
        self.matryoshka_weights = weights or ([1.0] * len(dims) if dims else None)
        self.gather_across_devices = gather_across_devices

    def get_config_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "matryoshka_dims": self.matryoshka_dims,
            "matryoshka_weights": self.matryoshka_weights,
            "gather_across_devices": self.gather_across_devices,
        }

    def forward(
        self,
        query_embeddings: torch.Tensor,
        doc_embeddings: torch.Tensor,
        doc_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean InfoNCE over the local queries.

        Args:
            query_embeddings: Tensor[B, E]; need not be normalised.
            doc_embeddings: Tensor[N, E], N >= B; rows 0..B-1 are the positives of the B queries, the rest are hard
                negatives.
            doc_keys: Tensor[N] int64, optional: a product key per document; documents sharing the positive's key are
                not used as negatives of that query.
        """
        batch_size, num_docs = query_embeddings.shape[0], doc_embeddings.shape[0]
        if num_docs < batch_size:
            raise ValueError(
                f"doc_embeddings has {num_docs} rows but there are {batch_size} queries; the first {batch_size} "
                "documents must be the positives."
            )
        if self.gather_across_devices:
            doc_embeddings, offset = gather_with_grad(doc_embeddings)  # (W * N, E)
            doc_keys = gather_no_grad(doc_keys) if doc_keys is not None else None
        else:
            offset = 0
        labels = torch.arange(batch_size, device=query_embeddings.device) + offset  # (B,)
        false_negatives = None
        if doc_keys is not None:
            positive_keys = doc_keys[labels]  # (B,)
            false_negatives = positive_keys.unsqueeze(1) == doc_keys.unsqueeze(0)  # (B, W * N)
            false_negatives[torch.arange(batch_size), labels] = False
        dims_and_weights = self._dims_and_weights(query_embeddings.shape[-1])
        losses = [
            weight
            * self.compute_loss_from_embeddings(
                query_embeddings[:, :dim], doc_embeddings[:, :dim], labels, false_negatives
            )
            for dim, weight in dims_and_weights
        ]
        return torch.stack(losses).sum() / sum(weight for _, weight in dims_and_weights)

    def compute_loss_from_embeddings(
        self,
        query_embeddings: torch.Tensor,
        doc_embeddings: torch.Tensor,
        labels: torch.Tensor,
        false_negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of cosine / temperature. query Tensor[B, E'], docs Tensor[M, E'], labels Tensor[B]."""
        scores = self.scores(query_embeddings, doc_embeddings)  # (B, M)
        if false_negatives is not None:
            scores = scores.masked_fill(false_negatives, float("-inf"))
        return F.cross_entropy(scores, labels)

    def scores(self, query_embeddings: torch.Tensor, doc_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity / temperature: Tensor[B, E'], Tensor[M, E'] -> Tensor[B, M]."""
        query_embeddings = F.normalize(query_embeddings.float(), dim=-1)
        doc_embeddings = F.normalize(doc_embeddings.float(), dim=-1)
        return query_embeddings @ doc_embeddings.T / self.temperature

    def _dims_and_weights(self, full_dim: int) -> list[tuple[int, float]]:
        if self.matryoshka_dims is None:
            return [(full_dim, 1.0)]
        if self.matryoshka_dims[-1] > full_dim:
            raise ValueError(
                f"matryoshka_dims {self.matryoshka_dims} exceed the embedding size {full_dim}; drop the larger sizes."
            )
        return list(zip(self.matryoshka_dims, self.matryoshka_weights, strict=True))


def in_batch_accuracy(
    query_embeddings: torch.Tensor, doc_embeddings: torch.Tensor, doc_keys: torch.Tensor | None = None
) -> float:
    """Fraction of queries whose top-scoring document (among `doc_embeddings`) is their positive (row i) or a
    document with the same key. Local only, no gradient: a training-time health metric."""
    with torch.no_grad():
        scores = (
            F.normalize(query_embeddings.float(), dim=-1) @ F.normalize(doc_embeddings.float(), dim=-1).T
        )  # (B, N)
        top = scores.argmax(dim=1)  # (B,)
        rows = torch.arange(query_embeddings.shape[0], device=top.device)
        if doc_keys is None:
            return (top == rows).float().mean().item()
        return (doc_keys[top] == doc_keys[rows]).float().mean().item()
