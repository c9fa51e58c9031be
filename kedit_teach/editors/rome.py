"""ROME, Rank-One Model Editing (Meng et al., NeurIPS 2022): an edit is a rank-one change of one MLP
down-projection W, so that the key of the subject maps to a value that makes the model say the new
target.

    k*   the down-projection's input at the subject's last token, averaged over the prompt behind
         short prefixes the model writes itself ("{}" plus n_prefixes of 5 and 10 tokens)     Eq. 3
    v*   W k + delta, with delta optimised so the model says target_new behind every prefix,
         a KL term keeping "{subject} is a" as it was, a weight decay on delta, and
         |delta| clamped to clamp_norm x |W k|                                                Eq. 4
    W' = W + (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*)                                          Eq. 2

C = E[k k^T] is the layer's key second moment (`layer_stats`). W' k* = v* exactly, and for keys
that C says are unlike k* the change is small.

The reference code uses the averaged key for C^-1 k* but the bare prompt's key in W k* and the
denominator; the two disagree, and some edits then blow up the layer ("disabling edits", Gupta et
al. 2024, r-ROME). `consistent_key=True` (the default) uses the averaged key in both places;
`consistent_key=False` reproduces the reference.

Choices, and why:
- the layer defaults to `default_rome_layer` (a layer sweep is `benchmarks/bench_locate.py layers`);
- 10 prefixes instead of the reference's 20: every step of the value optimisation runs the model on
  all of them, so this halves an edit's time;
- delta is optimised in fp32 (bf16 autocast was no faster for this backward pass on CPU, 1.25
  against 1.0-1.2 s a step), and only the target positions' logits are computed; the update is
  solved in float64;
- C gets a small ridge (`layer_stats.regularized`): with a few thousand keys some directions of C
  are nearly empty, and C^-1 k* would blow up along them.

Sequential edits are applied on top of each other, as in the papers' lifelong setting, and the
edited layer's Frobenius norm is logged after each (`norms`): its growth is the visible sign of the
collapse. remove() replays the other edits from the original weights (a rank-one update computed on
weights that included the removed edit cannot be subtracted exactly).

What it does not do: several layers at once (MEMIT, editors/memit.py) or 4-bit weights (refused:
load the model without quantization to edit its weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import EditCase
from ..errors import UsageError
from ..layer_stats import down_proj, regularized, second_moment
from ..metrics import pack_targets
from ..models import decoder_of, format_prompt, forward_hooks, logits_at
from ..tracing import subject_span
from .base import Editor, EditorStateError

STARTS = ("The", "Therefore", "Because", "I", "You")  # the reference's prefix openers


class LocateError(UsageError, ValueError):
    """An edit a locate-then-edit method can't make; the message names the fix."""


def default_rome_layer(model) -> int:
    """Low in the network: one eighth of the depth (Gemma-3-270M: layer 2 of 18; Llama-2-7B: 4 of 32,
    where EasyEdit edits layer 5). Measured on Gemma-3-270M, 10 CounterFact edits at layers 2 / 4 / 7:
    teacher-forced reliability 1.0 at each, generality 0.3 / 0.4 / 0.4, locality 0.9 / 0.6 / 0.4.
    Higher layers generalise a little better and bleed much more into neighbouring subjects."""
    return max(1, model.config.num_hidden_layers // 8)


def rank_one_update(W: torch.Tensor, C: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Eq. 2: Delta = (v - W k) (C^-1 k)^T / (k^T C^-1 k), in float64. W [d_out, d_k], C [d_k, d_k],
    k [d_k], v [d_out]. Then (W + Delta) k = v."""
    W, C, k, v = (t.to(torch.float64) for t in (W, C, k, v))
    u = torch.linalg.solve(C, k)  # C^-1 k, without forming the inverse
    return torch.outer(v - W @ k, u) / (k @ u)


def check_editable(linear, method: str) -> None:
    if type(linear) is not torch.nn.Linear:
        raise LocateError(f"{method} writes into {type(linear).__name__} weights, which are packed (4-bit) "
                          "and can't be changed in place; load the model without quantization "
                          "(load_model(name, quantization=None)) to use it, or use GRACE, LTE or RECIPE, "
                          "which leave the weights alone")


def add_at(module, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor):
    """Within this block, `module`'s output gets `delta` added at positions (rows[i], cols[i])."""
    def hook(m, args, out):
        out = out.clone()
        out[rows, cols] = out[rows, cols] + delta.to(out.dtype)
        return out
    return forward_hooks([(module, hook)])


def read_at(module, rows: torch.Tensor, cols: torch.Tensor, store: dict):
    """Within this block, store["input"] and store["output"] are `module`'s at (rows, cols)."""
    def hook(m, args, out):
        store["input"], store["output"] = args[0][rows, cols].detach(), out[rows, cols].detach()
    return forward_hooks([(module, hook)])


def _right_padded(tokenizer, texts: list[str]) -> dict:
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")


class ROME(Editor):
    name = "rome"
    summary = ("writes the fact into one MLP layer as a rank-one weight change: it generalises to "
               "rephrasings, but each edit moves the weights, and many edits wear the layer out")

    # EasyEdit's Llama settings (kmeng01/rome's GPT settings differ only in the weight decay)
    def __init__(self, model, tokenizer, layer: int | None = None, steps: int = 25, lr: float = 0.5,
                 kl_factor: float = 0.0625, weight_decay: float = 1e-3, clamp_norm: float = 4.0,
                 consistent_key: bool = True, mom2: bool = True, corpus: str = "model", n_keys: int | None = None,
                 ridge: float = 1e-3, n_prefixes: int = 10, seed: int = 0):
        super().__init__(model, tokenizer)
        self.layer = default_rome_layer(model) if layer is None else layer
        self.linear = down_proj(model, self.layer)
        check_editable(self.linear, "ROME")
        self.steps, self.lr, self.kl_factor, self.weight_decay = steps, lr, kl_factor, weight_decay
        self.clamp_norm, self.consistent_key, self.mom2, self.seed = clamp_norm, consistent_key, mom2, seed
        self.corpus, self.n_keys, self.ridge, self.n_prefixes = corpus, n_keys, ridge, n_prefixes
        self._original = self.linear.weight.detach().clone()
        self._C: torch.Tensor | None = None
        self._templates: list[str] | None = None
        self.norms: list[float] = []  # the edited layer's |W|_F after each edit

    def config(self):
        return {"layer": self.layer, "steps": self.steps, "lr": self.lr, "kl_factor": self.kl_factor,
                "weight_decay": self.weight_decay, "clamp_norm": self.clamp_norm,
                "consistent_key": self.consistent_key, "mom2": self.mom2, "corpus": self.corpus,
                "n_keys": self.n_keys, "ridge": self.ridge,
                "n_prefixes": self.n_prefixes, "seed": self.seed}

    # ------------------------------------------------------------------ what the update needs
    @property
    def C(self) -> torch.Tensor:
        """The key second moment of the edited layer, with a small ridge (`layer_stats.regularized`);
        the identity with mom2=False, as in EasyEdit's Llama configs."""
        if self._C is None:
            d_k = self.linear.in_features
            self._C = (regularized(second_moment(self.model, self.tokenizer, self.layer, corpus=self.corpus,
                                                 n_keys=self.n_keys).C, self.ridge)
                       if self.mom2 else torch.eye(d_k, dtype=torch.float64))
        return self._C

    def templates(self) -> list[str]:
        """"{}" and n_prefixes short prefixes the model writes itself, half of 5 tokens and half of 10
        (seeded, top-k 5). The reference uses 20; 10 halves the cost of an edit (see the module
        docstring). Made once per model and setting: every ROME editor on it shares them."""
        if self._templates is None:
            made = self.model.__dict__.setdefault("_kedit_rome_templates", {})
            key = (self.seed, self.n_prefixes)
            if key not in made:
                made[key] = self._sample_templates()
            self._templates = made[key]
        return self._templates

    @torch.random.fork_rng()  # seeded sampling, without moving the caller's random state
    def _sample_templates(self) -> list[str]:
        torch.manual_seed(self.seed)
        out = ["{}"]
        for length, n in ((5, self.n_prefixes // 2), (10, self.n_prefixes - self.n_prefixes // 2)):
            if not n:
                continue
            enc = self.tokenizer([STARTS[i % len(STARTS)] for i in range(n)], return_tensors="pt", padding=True,
                                 padding_side="left").to(self.model.device)
            with torch.no_grad():
                ids = self.model.generate(**enc, do_sample=True, top_k=5, max_new_tokens=length,
                                          pad_token_id=self.tokenizer.pad_token_id)
            for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True):
                out.append(text.replace("{", " ").replace("}", " ").strip() + ". {}")
        return out

    def _texts(self, case: EditCase, templates: list[str]) -> tuple[list[str], list[int]]:
        """Each template around the prompt, formatted for the model, and where the prompt starts in it."""
        texts, starts = [], []
        for t in templates:
            content = t.format(case.prompt)
            text = format_prompt(self.tokenizer, content)
            texts.append(text)
            starts.append(text.find(content) + len(t.split("{}")[0]))
        return texts, starts

    def _positions(self, texts: list[str], starts: list[int], subject: str) -> torch.Tensor:
        return torch.tensor([subject_span(self.tokenizer, x, subject, s)[1] - 1 for x, s in zip(texts, starts)])

    def _check(self, case: EditCase) -> None:
        if not case.subject:
            raise LocateError(f"case {case.case_id!r} has no subject; ROME reads the subject's last token, "
                              "so give the case a subject that occurs in its prompt")
        subject_span(self.tokenizer, format_prompt(self.tokenizer, case.prompt), case.subject)

    def key(self, case: EditCase) -> tuple[torch.Tensor, torch.Tensor]:
        """(k* averaged over the templates, k of the bare prompt), Eq. 3."""
        texts, starts = self._texts(case, self.templates())
        enc = _right_padded(self.tokenizer, texts).to(self.model.device)
        cols = self._positions(texts, starts, case.subject)
        store: dict = {}
        with torch.no_grad(), read_at(self.linear, torch.arange(len(texts)), cols, store):
            decoder_of(self.model)(**enc, use_cache=False)
        keys = store["input"].float().cpu()
        return keys.mean(0), keys[0]

    def value(self, case: EditCase) -> tuple[torch.Tensor, dict]:
        """delta, with v* = W k + delta (Eq. 4), optimised at the subject's last token behind every template."""
        texts, starts = self._texts(case, self.templates())
        batch = pack_targets(self.tokenizer, texts, [case.target_new] * len(texts))
        # pack_targets right-pads, so the subject keeps its positions; the target's tokens follow the prompt
        ids, mask = batch.input_ids.to(self.model.device), batch.attention_mask.to(self.model.device)
        rows, cols = torch.arange(len(texts)), self._positions(texts, starts, case.subject)
        kl_text = format_prompt(self.tokenizer, f"{case.subject} is a")
        kl_enc = _right_padded(self.tokenizer, [kl_text]).to(self.model.device)
        kl_col = self._positions([kl_text], [0], case.subject)
        body, gold = decoder_of(self.model), batch.gold.to(self.model.device)

        def kl_logp(delta):
            with add_at(self.linear, torch.zeros(1, dtype=torch.long), kl_col, delta):
                hidden = body(**kl_enc, use_cache=False).last_hidden_state
            return torch.log_softmax(logits_at(self.model, hidden[0, kl_col]), -1)

        store: dict = {}
        with torch.no_grad():
            with read_at(self.linear, rows[:1], cols[:1], store):
                body(input_ids=ids[:1], attention_mask=mask[:1], use_cache=False)
            kl_before = kl_logp(torch.zeros(self.linear.out_features, device=self.model.device))
        v0 = store["output"][0].float()
        delta = torch.zeros_like(v0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        limit = self.clamp_norm * v0.norm()
        losses = []
        for _ in range(self.steps):
            with add_at(self.linear, rows, cols, delta):
                hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            logp = torch.log_softmax(logits_at(self.model, hidden[batch.rows, batch.cols]), -1)
            nll = -logp.gather(1, gold[:, None]).mean()
            kl = F.kl_div(kl_logp(delta), kl_before, log_target=True, reduction="batchmean")
            loss = nll + self.kl_factor * kl + self.weight_decay * delta.norm() / v0.norm() ** 2
            losses.append(nll.item())
            if nll < 5e-2:  # the reference's early stop
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # |delta| <= clamp_norm x |v0|
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
        return delta.detach().cpu(), {"v_steps": len(losses), "nll_start": losses[0], "nll_end": losses[-1],
                                              "delta_norm": delta.norm().item(), "v0_norm": v0.norm().item()}

    def key_mismatch(self, case: EditCase) -> float:
        """(k*^T C^-1 k*) / (k^T C^-1 k*), k the bare prompt's key: how many times its shift the
        reference's update gives the averaged key k*. Far from 1, the edit overshoots ("disabling")."""
        k_mean, k_bare = (k.double() for k in self.key(case))
        u = torch.linalg.solve(self.C, k_mean)
        return float((k_mean @ u) / (k_bare @ u))

    # ------------------------------------------------------------------ the Editor hooks
    def _edit_one(self, case: EditCase) -> dict:
        self._check(case)
        k_mean, k_bare = self.key(case)
        shift, info = self.value(case)
        W = self.linear.weight.detach().cpu().double()
        if self.consistent_key:  # r-ROME: the averaged key everywhere, so W' k* = W k* + delta
            delta = rank_one_update(W, self.C, k_mean, W @ k_mean.double() + shift.double())
        else:  # the reference: C^-1 k* from the averaged key, v* - W k and k^T C^-1 k* from the bare prompt's
            u = torch.linalg.solve(self.C, k_mean.double())
            delta = torch.outer(shift.double(), u) / (k_bare.double() @ u)
        with torch.no_grad():
            self.linear.weight.add_(delta.to(self.linear.weight))
        self.norms.append(float(self.linear.weight.norm()))
        return {**info, "layer": self.layer, "update_norm": float(delta.norm()), "weight_norm": self.norms[-1]}

    def _apply(self, cases):
        for c in cases:  # check them all first: a refused call changes nothing
            self._check(c)
        return [self._edit_one(c) for c in cases]

    def _reset(self):
        with torch.no_grad():
            self.linear.weight.copy_(self._original)
        self.norms.clear()

    def _remove(self, case_id):
        keep = [c for cid, c in self.cases.items() if cid != case_id]
        self._reset()
        for c in keep:
            self._edit_one(c)

    def _check_saved(self, meta, tensors):
        super()._check_saved(meta, tensors)
        shape = tuple(self.linear.weight.shape)
        if "weight" in tensors and tuple(tensors["weight"].shape) != shape:
            raise EditorStateError(f"the saved weight has shape {tuple(tensors['weight'].shape)}, but layer "
                                   f"{self.layer}'s down-projection is {shape}; load it on the model it was saved from")

    def _state(self):
        return {"weight": self.linear.weight, "norms": torch.tensor(self.norms, dtype=torch.float64)}

    def _load_state(self, tensors):
        if "weight" in tensors:
            with torch.no_grad():
                self.linear.weight.copy_(tensors["weight"].to(self.linear.weight))
            self.norms = tensors["norms"].tolist()

    def inspect(self, prompt):
        change = self.linear.weight.detach() - self._original
        return {**super().inspect(prompt), "layer": f"layers.{self.layer}.mlp.down_proj",
                "weight_norm": float(self.linear.weight.norm()), "original_norm": float(self._original.norm()),
                "change_norm": float(change.norm()), "norms": list(self.norms)}
