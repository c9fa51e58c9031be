"""Fine-tuning a sentence encoder's top layers on a CPU: the layers below run once per text.

A BERT-style encoder (MiniLM) is a stack of layers. Training only the top n of them, the states
below are fixed for a given text, so they are computed once and kept (`lower_states`); each training
step runs n layers over them (`top_pass`), not the whole stack, and backpropagates through those
n alone. RECIPE's query side (`prompt_learning.RecipeModules.add_query_layers`) and SERAC's scope
classifier (`scope.py`) train this way.

It also holds the one rule for text given to MiniLM (`tokenize`): at most 128 tokens, refused
rather than cut. What it does not do: choose the loss, pool, or cache anything on disk (the callers do).
"""
from __future__ import annotations

import torch
from torch import nn


ENCODER_MAX_TOKENS = 128  # MiniLM was trained on 128-token inputs; longer text is refused, not cut


def tokenize(tokenizer, texts: list[str], what: str = "text") -> dict:
    """A padded batch for MiniLM; a text over ENCODER_MAX_TOKENS is refused, naming it and the fix."""
    if not texts:
        raise ValueError(f"no {what} to encode")
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    if int(lengths.max()) > ENCODER_MAX_TOKENS:
        i = int(lengths.argmax())
        raise ValueError(f"the {what} {texts[i][:60]!r}... is {int(lengths[i])} encoder tokens long; "
                         f"keep it under {ENCODER_MAX_TOKENS} (one fact or one question)")
    return enc


def run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Transformer layers over hidden [batch, tokens, width] with a [batch, tokens] 0/1 mask."""
    additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
    for layer in layers:
        out = layer(hidden, additive)
        hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 a tensor
    return hidden


def lower_states(encoder: nn.Module, enc: dict, top: int) -> list[torch.Tensor]:
    """Each tokenized text's states below the encoder's top `top` layers: [tokens, width] each,
    padding dropped (the embeddings and the other layers, without gradients)."""
    below = encoder.encoder.layer[:len(encoder.encoder.layer) - top]
    with torch.no_grad():
        hidden = run_layers(below, encoder.embeddings(input_ids=enc["input_ids"]), enc["attention_mask"])
    return [h[:int(n)].clone() for h, n in zip(hidden, enc["attention_mask"].sum(1))]


def top_pass(layers, states: list[torch.Tensor], pool, chunk: int = 64) -> torch.Tensor:
    """pool(hidden, mask) of `lower_states` through the top `layers`, with gradients. Texts are
    padded in chunks of similar length: one padded batch spent 2-3x its tokens on padding."""
    order = sorted(range(len(states)), key=lambda i: len(states[i]))
    out = []
    for i in range(0, len(order), chunk):
        part = [states[j] for j in order[i:i + chunk]]
        hidden = nn.utils.rnn.pad_sequence(part, batch_first=True)
        mask = nn.utils.rnn.pad_sequence([torch.ones(len(s), dtype=torch.long) for s in part], batch_first=True)
        out.append(pool(run_layers(layers, hidden, mask), mask))
    return torch.cat(out)[torch.tensor(order).argsort()]
