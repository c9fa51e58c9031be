"""Shared fixtures: tiny random models of the preset architectures, and the real 270M model.

Tiny models use a small BPE tokenizer trained here with a SentencePiece-style "▁" word marker,
so "▁Rome" and "Rome" are different tokens exactly as in Gemma. They are saved to a folder and
loaded through `load_model(path)`, the same code path as any Hugging Face id.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kedit_teach.data import SHARED_DIR as SHARED  # the local benchmark copy, ../shared/data
CORPUS = """The Eiffel Tower is located in the city of Paris . Rome is the capital of Italy .
The mother tongue of Danielle Darrieux is French . English is spoken in London .
The capital of Japan is Tokyo . Michel Rocard is a native speaker of French .
Toyota was founded in Japan . The Colosseum is in Rome . Berlin is in Germany .
[Updated Information] [Query] What is the capital of France ? Paris Rome Italy France""".split("\n")


def _tiny_tokenizer(byte_level: bool = False):
    """SentencePiece-style "▁" words (Gemma, Llama), or GPT-2 style byte-level "Ġ" words (Qwen2,
    whose tokenizer class transformers rebuilds as byte-level whatever the file says)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(vocab_size=300 + len(alphabet),
                                                            special_tokens=specials, initial_alphabet=alphabet))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def _tiny_config(arch: str, vocab: int):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(head_dim=16, sliding_window=16, **common)
    if arch == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(**common)
    from transformers import Qwen2Config
    return Qwen2Config(**common)


ARCHS = ("gemma3", "llama", "qwen2")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny random model per architecture (seeded, so every run sees the same weights)."""
    from transformers import AutoModelForCausalLM

    dirs = {}
    for arch in ARCHS:
        tok = _tiny_tokenizer(byte_level=arch == "qwen2")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(arch, len(tok)))
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs[arch] = path
    return dirs


@pytest.fixture(params=ARCHS)
def tiny(request, tiny_dirs):
    """(model, tokenizer) of each tiny architecture, loaded fresh (editors change weights)."""
    from kedit_teach.models import load_model
    return load_model(str(tiny_dirs[request.param]))


@pytest.fixture
def gemma_tiny(tiny_dirs):
    from kedit_teach.models import load_model
    return load_model(str(tiny_dirs["gemma3"]))


@pytest.fixture(scope="session")
def real():
    """The real Gemma-3-270M (converted once per session into $KEDIT_CACHE)."""
    from kedit_teach.models import load_model
    return load_model("gemma-3-270m")


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (the shared benchmark files sit next to the checkout)")
    return path


@pytest.fixture(scope="session")
def encoder():
    """The real all-MiniLM-L6-v2 sentence encoder, from its offline package."""
    from kedit_teach.models import load_encoder
    return load_encoder()


def cli_error(capsys, *argv: str) -> str:
    """Run the command line on bad input: it must exit with status 2, no traceback, and end on one
    line "error: ..." (progress bars may come before it). Returns that line."""
    from kedit_teach.__main__ import main
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: "), err[-500:]
    return err.strip().splitlines()[-1]
