"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 2.1):
which hidden states carry a fact from the subject to the answer.

Three runs of the same prompt, e.g. "The Eiffel Tower is located in" -> " Paris":

    clean      the model as it is:                                   p(answer) = p_clean
    corrupted  Gaussian noise on the subject tokens' input embeddings: p(answer) = p_corrupt
    restored   corrupted, but one state (token i, layer l) is copied
               back from the clean run:                               p(answer) = p[i, l]

A state that restores p(answer) is causally important for the fact. `kind` picks the state:
"hidden" (the residual stream after layer l), "mlp" or "attn" (that sublayer's output, restored over
a window of layers around l, as the paper does, because one sublayer alone moves little).

Choices, and why:
- Noise: 3 x the standard deviation of input embeddings over many subjects (the paper's nu), measured
  where the noise is added: the output of `embed_tokens`, which on Gemma already includes the
  sqrt(hidden) scaling. The same seeded noise is used for every restoration, so the only difference
  between two cells of the heatmap is the state restored.
- `samples` noisy copies (the paper: 10) are averaged; all (token, restored) groups of one layer run
  as one batch.
- Window: the paper restores 10 of GPT-2 XL's 48 layers (21% of the depth); for Gemma-3-270M's 18
  layers the default is 4 (22%), so the MLP and attention traces cover the same share of depth.
- Only the last position's logits are computed (Gemma's 262k-token output layer costs more than the
  body), in bf16 autocast on CPU: tracing changes no weight, so nothing is lost to bf16 rounding but
  a little precision in p.

`effect_correlation` says how well the traced effect predicts where a ROME edit works
(`editors.rome.trace_and_edit`), or why it can't say.

What it does not do: edit anything (ROME uses `subject_span` to find its key token; see editors/rome.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .metrics import plural
from .models import add_special, cpu_autocast, decoder_of, encode_pair, format_prompt, forward_hooks, logits_at

KINDS = ("hidden", "mlp", "attn")
NOISE_FACTOR = 3.0  # the paper's nu = 3 sigma


def window_size(n_layers: int) -> int:
    """The paper's 10-of-48 share of depth, for any depth (4 for 18 layers)."""
    return max(1, round(n_layers * 10 / 48))


def subject_span(tokenizer, text: str, subject: str, start: int = 0) -> tuple[int, int]:
    """Token positions [start, end) of the subject's first occurrence in `text` (as the model
    receives it, <bos> included) at or after character `start`. Raises ValueError if it is not there."""
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("subject is empty: name the entity the fact is about, as it is written in the prompt")
    at = text.find(subject, start)
    if at < 0:
        raise ValueError(f"the subject {subject!r} does not occur in the prompt {text!r}; locate-then-edit "
                         "methods read the subject's last token, so write the prompt with the subject in it "
                         "(same spelling and case)")
    enc = tokenizer(text, add_special_tokens=add_special(tokenizer, text), return_offsets_mapping=True)
    end = at + len(subject)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > at and a < end and b > a]
    return inside[0], inside[-1] + 1


def noise_level(model, tokenizer, subjects: list[str], factor: float = NOISE_FACTOR) -> float:
    """factor x the std of `embed_tokens`' output over the subjects' tokens (after any scaling)."""
    ids = [i for s in subjects for i in tokenizer(" " + s.strip(), add_special_tokens=False)["input_ids"]]
    if not ids:
        raise ValueError("noise_level needs at least one non-empty subject")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        vectors = embed(torch.tensor(ids, device=embed.weight.device)).float()
    return factor * float(vectors.std())


def default_noise(model, tokenizer) -> float:
    """The noise level over the bundled teach set's 248 subjects (computed once per model)."""
    if getattr(model, "_kedit_trace_noise", None) is None:
        from .data import load_teach
        model._kedit_trace_noise = noise_level(model, tokenizer, sorted({c.subject for c in load_teach()}))
    return model._kedit_trace_noise


@dataclass
class Trace:
    prompt: str
    subject: str
    target: str             # the answer whose probability is traced (its first token)
    kind: str
    window: int             # layers restored together (1 for "hidden")
    tokens: list[str]       # the input tokens, as the model sees them
    subject_range: tuple[int, int]
    p_clean: float
    p_corrupt: float
    scores: np.ndarray      # [tokens, layers]: p(answer) with that state restored
    noise: float

    @property
    def effect(self) -> np.ndarray:
        """The indirect effect p[i, l] - p_corrupt: what restoring the state recovers."""
        return self.scores - self.p_corrupt

    def at_last_subject_token(self) -> np.ndarray:
        """p restored per layer at the subject's last token, where ROME reads its key."""
        return self.scores[self.subject_range[1] - 1]


def _state_modules(model, kind: str) -> list[torch.nn.Module]:
    """Per layer, the module whose output is the traced state."""
    return [{"hidden": l, "mlp": l.mlp, "attn": l.self_attn}[kind] for l in decoder_of(model).layers]


def _main(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, main):
    return (main, *output[1:]) if isinstance(output, tuple) else main


def trace(model, tokenizer, prompt: str, subject: str, target: str | None = None, kind: str = "hidden",
          window: int | None = None, samples: int = 10, noise: float | None = None, seed: int = 1,
          progress: bool = True) -> Trace:
    """Causal trace of one prompt: p(answer) with each (token, layer) state restored.

    target: the answer to trace (default: the model's own next token on the clean prompt).
    window: layers restored together for "mlp" / "attn" (default `window_size`).
    noise: the std of the subject noise (default `default_noise`: 3 sigma of the teach subjects).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; use one of {KINDS}")
    if samples < 1:
        raise ValueError("samples must be at least 1 (the paper averages 10 noisy copies)")
    text = format_prompt(tokenizer, prompt)
    start, end = subject_span(tokenizer, text, subject)
    ids = tokenizer(text, add_special_tokens=add_special(tokenizer, text), return_tensors="pt")["input_ids"]
    ids = ids.to(model.device)
    n_tok, modules = ids.shape[1], _state_modules(model, kind)
    n_layers = len(modules)
    window = 1 if kind == "hidden" else (window or window_size(n_layers))
    noise = default_noise(model, tokenizer) if noise is None else float(noise)
    embed = model.get_input_embeddings()
    body = decoder_of(model)

    def p_last(input_ids) -> torch.Tensor:  # softmax over the last position only
        hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state[:, -1]
        return torch.softmax(logits_at(model, hidden), -1)

    clean: dict[int, torch.Tensor] = {}

    def keep(j):
        return lambda m, i, o: clean.__setitem__(j, _main(o)[0].detach().clone())

    with torch.no_grad(), cpu_autocast(model), forward_hooks([(m, keep(j)) for j, m in enumerate(modules)]):
        probs = p_last(ids)[0]
    if target is None:
        answer = int(probs.argmax())
        target = tokenizer.decode([answer])
    else:
        answer = encode_pair(tokenizer, text, target)[1][0]
    p_clean = float(probs[answer])

    g = torch.Generator().manual_seed(seed)
    draw = (torch.randn(samples, end - start, embed.weight.shape[1], generator=g) * noise).to(model.device)

    def corrupt(m, i, o):  # every row is a noisy copy; row r uses draw r % samples
        o = o.clone()
        o[:, start:end] += draw.repeat(o.shape[0] // samples, 1, 1).to(o.dtype)
        return o

    scores = np.zeros((n_tok, n_layers))
    with torch.no_grad(), cpu_autocast(model):
        with forward_hooks([(embed, corrupt)]):
            p_corrupt = float(p_last(ids.repeat(samples, 1))[:, answer].mean())
        rows = torch.arange(n_tok * samples, device=model.device)
        token_of_row = rows // samples  # group i restores token i
        for layer in tqdm(range(n_layers), desc=f"causal trace ({kind})", disable=not progress, leave=False):
            lo = max(0, layer - window // 2)
            restored = range(lo, min(n_layers, lo + window))

            def restore(j):
                def hook(m, i, o):
                    main = _main(o).clone()
                    main[rows, token_of_row] = clean[j][token_of_row].to(main.dtype)
                    return _replace(o, main)
                return hook

            with forward_hooks([(embed, corrupt)] + [(modules[j], restore(j)) for j in restored]):
                p = p_last(ids.repeat(n_tok * samples, 1))[:, answer].float()
            scores[:, layer] = p.view(n_tok, samples).mean(1).cpu().numpy()
    tokens = [tokenizer.decode([t]) for t in ids[0].tolist()]
    return Trace(prompt, subject, target, kind, window, tokens, (start, end), p_clean, p_corrupt, scores, noise)


def effect_correlation(found, against=("reliability", "generality")) -> str:
    """How well the traced effect predicts each column of `found` (rows of `editors.rome.trace_and_edit`,
    a list of dicts or a DataFrame), as a sentence. A Pearson correlation needs at least three
    (fact, layer) pairs, and columns that vary; otherwise it is undefined (nan), and the sentence
    says why instead (fast mode traces two pairs)."""
    import pandas as pd
    found = pd.DataFrame(found)
    if len(found) < 3:
        return (f"{plural(len(found), '(fact, layer) pair')}: too few for a correlation, "
                "which needs at least 3 (trace more facts or layers, fast mode off)")
    parts = []
    for column in against:
        both = found[["traced effect", column]].dropna().astype(float)
        parts.append(f"{column} {both['traced effect'].corr(both[column]):.2f}"
                     if len(both) >= 3 and (both.std() > 0).all() else
                     f"{column} undefined ({'too few values' if len(both) < 3 else 'it does not vary'})")
    return f"correlation of the traced effect with {', with '.join(parts)}; over {len(found)} (fact, layer) pairs"
