"""Embeddings of GRPO completions (for the retrieval-rank reward) without a second pass over prompt + completion.

A completion is embedded at its last token (`<emb>`, or the last generated token when it was cut off), as one
forward over prompt + completion would. During `generate()` that hidden state is already computed for most rows: the
decode step that feeds a finished row's `<emb>` back runs the backbone over it. `GenerationRecorder` keeps, while
generation runs, the prompt's raw signals (prefill) and the last-position hidden state of every one-token decode step;
`completion_embeddings` then reads each row's state at its last token, runs ONE more decode step over the
generation's cache for the rows whose last token was never fed back (cut off, or finished on the last step), and
applies MOON3's fusion and projection head once to the whole batch.

`forward_embeddings` is the fallback when nothing was recorded (vLLM or continuous batching): one no-gradient
forward over the prompt ids TRL generated from (no re-tokenisation, no image re-processing) and the completions.
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
def completion_embeddings(model, recorder: GenerationRecorder, completion_ids: list[list[int]]) -> torch.Tensor | None:
    """Tensor[B, E]: each completion's embedding at its last token, from what `recorder` kept (None if it kept too
    little: no prefill signals, or rows left for an extra step but no cache)."""
    if recorder.signals is None or recorder.prompt_mask is None:
        return None
    batch = len(completion_ids)
    last_column = torch.tensor([max(len(ids), 1) - 1 for ids in completion_ids])  # (B,)
    fed = [recorder.states.get(recorder.prompt_width + int(column)) for column in last_column]
    missing = [row for row, state in enumerate(fed) if state is None]
    extra = None
    if missing:
        extra = _extra_decode_step(model, recorder, completion_ids)
        if extra is None:
            return None
    rows = torch.arange(batch)
    states = torch.stack([extra[row] if state is None else state[row] for row, state in zip(rows, fed, strict=True)])
    return model.embed_states(states, recorder.signals)  # (B, E)


def _extra_decode_step(model, recorder: GenerationRecorder, completion_ids):
    """Final hidden states Tensor[B, D] after feeding each row's last completion token over the generation's cache.

    The cache holds the prompt and every generated column but the last; the rows that need this step end on that
    last column (other rows feed a pad token, and their result is not used)."""
    config = model.config
    device = recorder.prompt_mask.device
    width = max(len(ids) for ids in completion_ids)  # generated columns
    if recorder.cache is None or recorder.cache.get_seq_length() != recorder.prompt_width + width - 1:
        return None
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
    return recorder.states.get(recorder.prompt_width + width - 1)


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
