"""Embeddings of GRPO completions (for the retrieval-rank reward) without a second pass over prompt + completion.

A completion is embedded at its last token (`<emb>`, or the last generated token when it was cut off), as one
forward over prompt + completion would. During `generate()` that hidden state is already computed for most rows: the
decode step that feeds a finished row's `<emb>` back runs the backbone over it. `GenerationRecorder` keeps, while
generation runs, the prompt's raw signals (prefill) and the last-position hidden state of every one-token decode step;
`completion_embeddings` then reads each row's state at its last token, runs ONE more decode step over the
generation's cache (cropped to the completions) and applies MOON3's fusion and projection head once to the batch.

That extra decode step runs on EVERY process, every generation, whether or not one of its rows needs it: under
DeepSpeed ZeRO-3 each forward all-gathers parameters collectively, so a process that skipped it (all its `<emb>`
already fed back, e.g. under `synced_gpus`, where finished processes keep decoding) would leave the others waiting.

`forward_embeddings` (one forward over prompt ids + completions) is the reference the tests compare against; the
trainer never falls back to it (a fallback taken on some processes only is exactly what must not happen).
"""

from __future__ import annotations

import torch


class GenerationRecorder:
    """Context manager: while active, record what `model.generate()` computes (see the module docstring).

    Attributes after the block: `signals` (the prefill's `Moon3RawSignals`), `cache` (the generation's cache),
    `states` ({absolute position of the fed token: Tensor[B, D] final hidden state}), `prompt_width` (padded prompt
    length) and `prompt_mask` (Tensor[B, P]).
    """

    def __init__(self, model):
        self.model = model
        self.signals = self.cache = self.prompt_mask = None
        self.prompt_width = 0
        self.states: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        self._handles = [
            self.model.register_forward_hook(self._policy_hook, with_kwargs=True),
            self.model.backbone.model.register_forward_hook(self._backbone_hook, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _policy_hook(self, module, args, kwargs, output):
        if getattr(output, "raw_signals", None) is not None and self.signals is None:  # the prefill
            self.signals = output.raw_signals
            input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            # generate() drops an all-ones mask
            self.prompt_mask = torch.ones_like(input_ids) if mask is None else mask
            self.prompt_width = input_ids.shape[1]

    def _backbone_hook(self, module, args, kwargs, output):
        cache = kwargs.get("cache")
        if kwargs["input_ids"].shape[1] == 1 and cache is not None:  # a decode step: one token per row
            self.cache = cache
            self.states[cache.get_seq_length() - 1] = output.last_hidden_state[:, -1]  # (B, D)


@torch.no_grad()
def completion_embeddings(model, recorder: GenerationRecorder, completion_ids: list[list[int]]) -> torch.Tensor:
    """Tensor[B, E]: each completion's embedding at its last token, from what `recorder` kept.

    Always runs exactly one decode step (see the module docstring). Raises `RuntimeError` when the recorder saw no
    prefill or no decode cache: the same on every process, since every process runs the same generation code."""
    if recorder.signals is None or recorder.prompt_mask is None or recorder.cache is None:
        raise RuntimeError(
            "Moon3GRPOTrainer: generate() ran without a prefill or a decode cache that MOON3 could record (the "
            "completions' embeddings are read from it). Generate with transformers' generate() and use_cache=True."
        )
    extra = _extra_decode_step(model, recorder, completion_ids)  # (B, D)
    width = max(len(ids) for ids in completion_ids)
    states = []
    for row, ids in enumerate(completion_ids):
        last = recorder.prompt_width + max(len(ids), 1) - 1  # absolute position of the row's last token
        fed = recorder.states.get(last) if len(ids) < width else None  # the widest rows end on the extra step
        states.append(extra[row] if fed is None else fed[row])
    return model.embed_states(torch.stack(states), recorder.signals)  # (B, E)


def _extra_decode_step(model, recorder: GenerationRecorder, completion_ids) -> torch.Tensor:
    """Final hidden states Tensor[B, D] after feeding each row's last completion token over the generation's cache.

    The cache is cropped to the prompt and every generated column but the last (decoding can run past the
    completions: `synced_gpus` keeps a finished process decoding until all are done); the rows that need this step
    end on that last column, other rows feed a pad token and their result is not used."""
    config = model.config
    device = recorder.prompt_mask.device
    width = max(max(len(ids) for ids in completion_ids), 1)  # generated columns
    keep = recorder.prompt_width + width - 1
    surplus = recorder.cache.get_seq_length() - keep
    if surplus < 0:
        raise RuntimeError(
            f"The generation cache holds {keep + surplus} positions but the completions need {keep}; were the "
            "completions produced by this generate() call?"
        )
    if surplus:
        recorder.cache.crop(-surplus)  # transformers 5: a negative count removes that many trailing positions
    last = [ids[-1] if len(ids) == width else config.pad_token_id for ids in completion_ids]
    input_ids = torch.tensor(last, device=device).unsqueeze(1)  # (B, 1)
    mask = torch.cat([recorder.prompt_mask, recorder.prompt_mask.new_ones(len(last), width)], dim=1)  # (B, P + T)
    # The backbone hook records this step's hidden states like those of generate()'s own decode steps.
    model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=model._decode_position_ids(mask, 1),
        cache=recorder.cache,
        use_cache=True,
        return_embeddings=False,
    )
    return recorder.states[keep]


@torch.no_grad()
def forward_embeddings(
    model, prompt_ids, multimodal_fields: dict, completion_ids: list[list[int]], device
) -> torch.Tensor:
    """Tensor[B, E]: embeddings at each completion's last token from one forward over prompt + completion.

    `prompt_ids` (lists of ints) and `multimodal_fields` (`pixel_values`, `image_grid_thw`, ...) are what TRL
    generated from."""
    config = model.config
    sequences = [
        list(prompt) + list(completion) for prompt, completion in zip(prompt_ids, completion_ids, strict=True)
    ]
    width = max(len(s) for s in sequences)
    input_ids = torch.tensor([[config.pad_token_id] * (width - len(s)) + s for s in sequences], device=device)
    attention_mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": ((input_ids == config.image_token_id) & attention_mask.bool()).int(),
    }
    for key in ("pixel_values", "image_grid_thw"):
        if multimodal_fields.get(key) is not None:
            inputs[key] = multimodal_fields[key].to(device)
    return model(**inputs, return_embeddings=True).embeddings
