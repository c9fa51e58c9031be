"""A normal run shows no red boxes: the library messages quiet.py knows to be harmless stay silent
through model loads, edits and answers; the libraries' other messages still show."""
from __future__ import annotations

import logging
import warnings

import pytest

from kedit_teach.editors import FTL, GRACE
from kedit_teach.models import load_encoder, load_model
from kedit_teach.quiet import silence_known_noise
from kedit_teach.tour import EIFFEL

NOISE = ("past_key_values", "is_gradient_checkpointing", "loss_type=None", "gemm_4bit_forward", "Loading weights")


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def logged():
    """Messages logged by transformers and bitsandbytes (transformers' loggers don't reach the root)."""
    handler, loggers = Records(), [logging.getLogger(n) for n in ("transformers", "bitsandbytes")]
    for logger in loggers:
        logger.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers says each of these once per process
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


def noise(messages) -> list[str]:
    return [m for m in map(str, messages) if any(n in m for n in NOISE)]


def test_a_load_an_edit_and_answers_show_none_of_the_known_noise(tiny_dirs, logged, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as if each were new; load_model puts its filters in front
        model, tok = load_model(str(tiny_dirs["gemma3"]))
        editor = GRACE(model, tok, n_iter=2)  # runs its prompt once into a KV cache: past_key_values
        editor.edit(EIFFEL)
        editor.generate(EIFFEL.prompt, 4)
        model = editor.detach()
        q, qtok = load_model(str(tiny_dirs["llama"]), quantization="4bit")  # bitsandbytes, then peft's LoRA
        FTL(q, qtok, steps=1).edit(EIFFEL)
    assert not noise(w.message for w in caught) and not noise(logged)
    assert "Loading weights" not in capfd.readouterr().err


def test_tracing_the_encoder_reads_its_loss_without_a_word(logged, capfd):
    from kedit_teach.prompt_learning import trace_encoder
    encoder = load_encoder()
    trace_encoder(encoder[0].auto_model, encoder.tokenizer, half=False)  # RECIPE's and SERAC's traced MiniLM
    assert not noise(logged)
    assert "Loading weights" not in capfd.readouterr().err


def test_only_the_known_messages_are_dropped(logged):
    """bitsandbytes logs its kernel message on import, on CPUs with AVX512-BF16 only: said here."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("`past_key_values` is deprecated and will be removed in version 5.40.0", FutureWarning)
        warnings.warn("`something_else` is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                "`pip install kernels` and the kernels >= 0.11.1", ValueError("... Set trust_remote_code=True ..."))
    ops.warning("another bitsandbytes message")
    logging.getLogger("transformers.modeling_utils").warning("another transformers message")
    assert logged == ["another bitsandbytes message", "another transformers message"]
