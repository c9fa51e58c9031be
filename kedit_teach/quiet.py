"""Library messages that look like errors in a notebook (stderr is a red box in Jupyter) but are
known to be harmless in this course, silenced one by one; each entry says why it is harmless.

`silence_known_noise()` runs at every model and encoder load (models.py), before anything that
can emit them. `no_load_bar()` hides transformers' "Loading weights" bar while a local checkpoint
loads (a fraction of a second; the stress cells load MiniLM once per method).

What it does not do: hide anything else. Any other warning or log line still shows, and a
silenced library's other messages too.
"""
from __future__ import annotations

import contextlib
import logging
import warnings


class _DropStarting(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


# (logger, the start of the dropped message). Each filter sits on the logger that emits the message,
# so the library's other messages pass.
LOGGED = (
    # bitsandbytes, on a CPU with AVX512-BF16, tries to fetch a faster 4-bit inference kernel from the
    # Hugging Face hub when it is imported (by peft or a 4-bit load); the hub refuses without
    # trust_remote_code (or there is no network), and bitsandbytes falls back to its own kernel. The
    # course never uses that kernel anyway: models._keep_4bit_differentiable turns its path off.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # transformers 5 renamed the KV-cache argument `past_key_values` to `cache`; GRACE and the
    # locate-then-edit editors pass `past_key_values`, which transformers maps onto `cache`. The
    # course supports transformers >= 4.56, which has no `cache` (see the FutureWarning below).
    ("transformers.utils.generic", "`past_key_values`/`cache_params` are deprecated"),
    # torch.jit.trace of MiniLM (prompt_learning.trace_encoder: RECIPE's and SERAC's encoders) reads
    # every attribute of the model, its loss function too; no loss is computed, MiniLM is never given labels.
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),
)

WARNED = (
    # The same rename as above, as a FutureWarning on each forward given `past_key_values`. It works
    # up to transformers 5.39; the removal in 5.40 will need `cache=` in editors/grace.py and locate.py.
    (FutureWarning, r"`past_key_values` is deprecated"),
    # peft (LTE's adapter, FT-L's LoRA on 4-bit models) reads `is_gradient_checkpointing`, renamed in
    # transformers 5; the value is the same under either name, and the course never checkpoints.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)

_FILTERS = [(name, _DropStarting(start)) for name, start in LOGGED]


def silence_known_noise() -> None:
    """Install the filters above; idempotent. Warning filters are installed again on each call, since
    `warnings.catch_warnings` blocks (pytest runs every test in one) restore the filters they found."""
    for name, drop in _FILTERS:
        logging.getLogger(name).addFilter(drop)  # the same filter object twice is kept once
    for category, message in WARNED:
        warnings.filterwarnings("ignore", message=message, category=category)


@contextlib.contextmanager
def no_load_bar(local: bool = True):
    """Within this block transformers draws no progress bar, if `local` (a folder on disk: nothing is
    downloaded and loading takes a fraction of a second). A hub id keeps its download and
    loading bars: a 7B model takes minutes."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if not local or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # transformers' bars, and the hub's
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_was_off:
            disable_progress_bars()
