"""The embedded tiny random models: real token geometry, random weights, an offline word-level tokenizer and the
real HF processors. The demo, `VideoLLM.tiny`, `stop-hf eval --model tiny-<arch>` and the test kit
(`stop_hf.testing`, which re-exports these names) all run on them.

Nothing here downloads anything. Models are built from configs, saved with `save_pretrained` and loaded back
through the real `from_pretrained` path, so tests exercise what users run. Each architecture's adapter supplies
its tiny config and processor (`tiny_config`, `tiny_processor`); its vocabulary is `VOCAB_SIZE` and its special
token ids come from `token_id`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

#: q/k projections are scaled by this in tiny models: random-init attention is otherwise nearly uniform, and
#: position bugs would not show in the logits.
QK_SCALE = 6.0

WORDS = (  # noqa: SIM905 - a word list reads better as text
    "user assistant system ? . , : ; ! ' ( ) - the a an is are was were be been of to in on at by for "
    "with from and or not no yes what which who where when how why this that these those it its there "
    "here video frame image scene person man woman child dog cat car ball table chair door window room "
    "street road tree sky water red blue green yellow black white small large left right top bottom "
    "front back up down open close walk run jump sit stand hold take put give look see show move turn "
    "play eat drink read write talk happen happens happened first last next then before after during "
    "while one two three four five many few some all any each every other same different answer question "
    "option choose describe count color shape object action event time start end begin finish does do "
    "did can could will would should may might must has have had get got make made go went come came"
).split()

SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<video>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: InternVL's image wrappers and context token, and the frame labels its processor writes (`Frame{i}: <img>...`):
#: in the vocabulary after the words, so the other architectures' token ids do not move
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")
FRAME_LABELS = tuple(f"Frame{i}" for i in range(1, 129))

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}{{ video_placeholder }}{% elif part['type'] == 'image' %}"
    "{{ image_placeholder }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 512


def build_tokenizer(**named_tokens: str):
    """A word-level fast tokenizer with the special tokens the architectures need. ids: specials first.

    `named_tokens` (e.g. `context_image_token="<IMG_CONTEXT>"`) become named special tokens (attributes
    `<name>` and `<name>_id`), as a real checkpoint's tokenizer config declares them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in (*WORDS, *INTERNVL_TOKENS, *FRAME_LABELS):
        vocab.setdefault(word, len(vocab))
    for i in range(len(vocab), VOCAB_SIZE):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<pad>", "<unk>")]
        + [t for t in named_tokens.values() if t not in SPECIAL_TOKENS],
        padding_side="left",
        **named_tokens,
    )
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer._tokenizer.decoder = backend.decoder
    return tokenizer


def token_id(token: str) -> int:
    if token in SPECIAL_TOKENS:
        return SPECIAL_TOKENS.index(token)
    return len(SPECIAL_TOKENS) + len(dict.fromkeys(WORDS)) + INTERNVL_TOKENS.index(token)


def _sharpen(module: torch.nn.Module, factors: dict[str, float]) -> None:
    with torch.no_grad():
        for name, param in module.named_parameters():
            for part, factor in factors.items():
                if part in name and name.endswith("weight"):
                    param.mul_(factor)
                    break


def tiny_config(arch: str, servable: bool = False):
    """The tiny config of a registered architecture (its adapter's `tiny_config`: real token geometry). `servable`:
    the LLM's attention heads are 32 wide (`SERVABLE_HEAD_DIM`), which vLLM's CPU attention needs."""
    config = _adapter(arch).tiny_config()
    config.eos_token_id = token_id("<|im_end|>")
    config.pad_token_id = token_id("<pad>")
    if servable:
        _widen_text_heads(config.text_config)
        if getattr(config, "model_type", "").startswith("qwen3_vl"):
            # HF's Qwen3-VL always interleaves the T/H/W rotary slots; vLLM does only when the config says so (the
            # hub checkpoints do: `"mrope_interleaved": true`)
            config.text_config.rope_parameters["mrope_interleaved"] = True
        if getattr(config, "model_type", "") == "qwen3_vl_moe":
            _hub_moe_config(config.text_config)
        if getattr(config.text_config, "linear_key_head_dim", None) is not None:
            # Qwen3.5's Gated-DeltaNet layers: vLLM's CPU kernel (`chunk_gated_delta_rule_cpu`) takes equal key and
            # value head dims of 64 or 128 only ("Unexpected head dim size, 32")
            config.text_config.linear_key_head_dim = SERVABLE_LINEAR_HEAD_DIM
            config.text_config.linear_value_head_dim = SERVABLE_LINEAR_HEAD_DIM
    return config


def _hub_moe_config(text: Any) -> None:
    """Qwen3-VL-MoE text config fields as the hub's Qwen3-VL-30B-A3B config.json has them.

    - `norm_topk_prob: true`: vLLM 0.32's Qwen3-MoE block reads it (vllm/model_executor/models/qwen3_moe.py:210,
      `renormalize=config.norm_topk_prob`) and transformers' config class has no such field; HF's router always
      renormalises the top-k weights (modeling_qwen3_vl_moe.py `Qwen3VLMoeTextTopKRouter.forward`), which is `true`.
    - experts `moe_intermediate_size` neither `hidden_size` nor half of it: the checkpoint stores the fused experts in
      the hub's transposed layout (`_hub_moe_layout`) and transformers transposes them back only when the shape
      differs from its parameter's (conversion_mapping.py "qwen3_vl_moe": `Transpose(1, 2, check_dims=True)`); a
      square expert matrix would load untransposed."""
    text.norm_topk_prob = True
    if text.moe_intermediate_size in (text.hidden_size, text.hidden_size // 2):
        text.moe_intermediate_size = text.hidden_size * 3 // 2


#: vLLM's CPU attention refuses head_dim 16 (`Unsupported CPU attention configuration`); 32 is served.
SERVABLE_HEAD_DIM = 32
#: Qwen3.5's linear-attention head dims: vLLM's CPU Gated-DeltaNet kernel is built for 64 and 128 (and runs in
#: bfloat16 only: vllm/model_executor/layers/mamba/ops/cpu/gdn_attention.py:158 "CPU GDN attention requires BF16.")
SERVABLE_LINEAR_HEAD_DIM = 64


def _widen_text_heads(text: Any) -> None:
    """Same hidden size, fewer and wider LLM heads (head_dim 32); the mRoPE sections scaled to the new width."""
    heads = text.hidden_size // SERVABLE_HEAD_DIM
    old_head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    text.num_attention_heads = heads
    text.num_key_value_heads = max(1, min(text.num_key_value_heads, heads // 2))
    if getattr(text, "head_dim", None) is not None:
        text.head_dim = SERVABLE_HEAD_DIM
    rope = getattr(text, "rope_parameters", None) or {}
    if "mrope_section" in rope:
        scale = SERVABLE_HEAD_DIM // old_head_dim
        rope["mrope_section"] = [s * scale for s in rope["mrope_section"]]


def tiny_llava_onevision_config():
    """LLaVA-OneVision with SigLIP 384/14 geometry (729 patches -> 196 pooled tokens per frame)."""
    return tiny_config("llava_onevision")


def tiny_qwen2_5_vl_config():
    """Qwen2.5-VL with real geometry: patch 14, merge 2, temporal patch 2, window attention + full blocks."""
    return tiny_config("qwen2_5_vl")


def _adapter(arch: str):
    from stop_hf.patches import architecture

    return architecture(arch)


def build_tiny_model(arch: str = "llava_onevision", seed: int = 0, servable: bool = False):
    """A random tiny model of `arch` (in memory, eval mode, fp32), its attention sharpened by the adapter's
    `tiny_sharpen` factors (q/k projections x QK_SCALE by default). `servable`: see `tiny_config`."""
    from stop_hf import compat

    adapter = _adapter(arch)
    torch.manual_seed(seed)
    model = compat.model_class(adapter.model_class)(tiny_config(arch, servable))
    _sharpen(model, adapter.tiny_sharpen)
    adapter.tiny_adjust(model)
    return model.eval()


def save_tiny_checkpoint(
    path: str | Path, arch: str = "llava_onevision", seed: int = 0, servable: bool = True
) -> Path:
    """Writes a tiny model, its tokenizer, processor and chat template to `path`: a folder that HF `from_pretrained`
    and (with `servable`, the default) vLLM's CPU backend both load (LLM heads 32 wide; weight names as hub
    checkpoints spell them)."""
    path = Path(path)
    build_tiny_model(arch, seed, servable).save_pretrained(path)
    processor = build_processor(arch)
    if servable and arch.startswith(("qwen3_vl", "qwen3_5")):
        # vLLM normalises Qwen3-VL's pixels on the device with ONE mean/std for images and videos (the image
        # processor's); the hub checkpoints use 0.5/0.5 for both, as the video processor here does
        processor.image_processor.image_mean = list(processor.video_processor.image_mean)
        processor.image_processor.image_std = list(processor.video_processor.image_std)
    processor.save_pretrained(path)
    if servable and arch != "internvl":  # InternViT's names (`vision_tower.encoder.*`) are the hub's already
        _hub_weight_names(path)
        if arch == "qwen3_vl_moe":
            _hub_moe_layout(path)
    return path


#: fused expert tensors: transformers 5.x holds gate_up_proj (E, 2I, H) and down_proj (E, H, I) and saves them so;
#: the hub checkpoints (Qwen3-VL-30B-A3B) store them transposed, (E, H, 2I) and (E, I, H). vLLM 0.32 reads only the
#: hub layout (vllm/model_executor/models/qwen3_vl_moe.py `Qwen3VLMoeDecoderLayer`: `is_fused_checkpoint_transposed=
#: True`, so fused_moe/routed_experts.py `_orient_fused_weight` transposes, then chunks gate/up on dim 1);
#: transformers 5.19 and 5.24 read both (conversion_mapping.py "qwen3_vl_moe": `Transpose(1, 2, check_dims=True)`).
_MOE_FUSED = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


def _hub_moe_layout(path: Path) -> None:
    """Rewrites a Qwen3-VL-MoE checkpoint's fused experts in the hub's (transposed) layout, in place; the config
    spells the expert count `num_experts` as the hub's does (transformers maps it to `num_local_experts`)."""
    import json

    from safetensors.torch import load_file, save_file

    for file in sorted(path.glob("*.safetensors")):
        weights = load_file(file)
        hub = {
            name: value.transpose(1, 2).contiguous() if name.endswith(_MOE_FUSED) else value
            for name, value in weights.items()
        }
        save_file(hub, file, metadata={"format": "pt"})
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    text = config["text_config"]
    if "num_local_experts" in text:
        text["num_experts"] = text.pop("num_local_experts")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _hub_weight_names(path: Path) -> None:
    """Some transformers releases save LLaVA-OV's SigLIP tower as `vision_tower.*`; hub checkpoints (and vLLM's
    loader) spell it `vision_tower.vision_model.*`, which every release loads. Rewrites the names in place."""
    from safetensors.torch import load_file, save_file

    for file in sorted(path.glob("*.safetensors")):
        weights = load_file(file)
        renamed = {}
        for name, value in weights.items():
            head, sep, tail = name.partition("vision_tower.")
            if sep and not tail.startswith("vision_model.") and "siglip" not in tail:
                name = f"{head}vision_tower.vision_model.{tail}"
            renamed[name] = value
        if renamed.keys() != weights.keys():
            save_file(renamed, file, metadata={"format": "pt"})


def tiny_checkpoint(arch: str = "llava_onevision", seed: int = 0) -> Path:
    """A cached tiny checkpoint folder for this process (created on first use)."""
    _adapter(arch)
    key = (arch, seed)
    if key not in _CHECKPOINTS:
        folder = Path(tempfile.mkdtemp(prefix=f"stop_hf_tiny_{arch}_"))
        atexit.register(shutil.rmtree, folder, True)
        _CHECKPOINTS[key] = save_tiny_checkpoint(folder, arch, seed, servable=False)
    return _CHECKPOINTS[key]


_CHECKPOINTS: dict[tuple[str, int], Path] = {}


def build_processor(arch: str = "llava_onevision"):
    """The real HF processor of `arch` around the offline tokenizer."""
    return _adapter(arch).tiny_processor(build_tokenizer(), CHAT_TEMPLATE)
