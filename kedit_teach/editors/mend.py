"""MEND as an editor: each edit is one forward and backward pass on (prompt, target_new), its
gradient's rank-one factors at the last three down-projections turned by the trained network into
an update (`mend.py`), written into those weights. No optimisation at edit time.

Edits are sequential: the next edit's gradient is taken on the weights the earlier ones changed,
which the network never saw in training (it was trained on single edits of the unedited model);
how far that carries is what notebook 04 measures. reset() copies the original weights back;
remove() replays the other edits (weights.WeightEditor).

What it does not do: train the network (`python -m kedit_teach train mend`) or write into 4-bit
weights (refused, as ROME's).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import mend
from ..models import decoder_of
from .weights import WeightEditor, frobenius, packed


class MEND(WeightEditor):
    name = "mend"
    summary = ("a trained network turns each edit's fine-tuning gradient into an update of three MLP weight "
               "matrices: one pass per edit, no optimisation; the weights stay changed")
    trained = ("network", "a MEND network", "MEND(model, tok, network=<its folder>)")

    @classmethod
    def unsupported(cls, model):
        return packed(decoder_of(model).layers[-1].mlp.down_proj, cls.__name__)

    def __init__(self, model, tokenizer, network: str | Path | mend.MendNetwork = "default"):
        """network: "default" (yours from `train mend`, else the one shipped for this model), a
        folder, or a MendNetwork."""
        if isinstance(network, mend.MendNetwork):
            self.network, self.record = network, None
        else:
            name = str(getattr(model, "kedit_name", None))
            path = mend.default_path(name) if network == "default" else Path(network)
            if network == "default" and not (path / mend.WEIGHTS_FILE).exists():
                raise mend.MendError(f"no MEND network for model {name!r}: train one (`python -m kedit_teach train mend "
                                     f"--model {name}`; 80 min on 2 CPU cores for Gemma-3-270M) or pass network=<folder>")
            self.network, self.record = mend.load_network(path)
        mend.check_network(self.network, model)
        super().__init__(model, tokenizer, list(self.network.config.layers))
        self.network.eval()
        self._fingerprint = self.network.fingerprint()

    def config(self):
        return {"network": self._fingerprint, "layers": self.layers, "rank": self.network.config.rank}

    def _edit(self, cases):
        (case,) = cases  # one group per case: each edit's gradient is taken after the one before
        factors = mend.edit_factors(self.model, self.tokenizer, self.layers, [case.prompt], [case.target_new])
        with torch.no_grad():
            change = self.network.update(self.network.pseudo(factors))
        for layer, delta in change.items():
            self._add(layer, delta)
        return [{"update_norm": frobenius(change.values()), "tokens": int(factors[self.layers[0]].keep.sum())}]

    def inspect(self, prompt):
        return {**super().inspect(prompt), "alpha": self.network.alpha.tolist()}
