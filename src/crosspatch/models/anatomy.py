"""Architecture anatomy: where the decoder layers, final norm and lm_head of a causal LM live.

Generic discovery covers the usual Hugging Face layout (``model.<prefix>.layers`` + ``norm``);
a small registry names the exceptions (GPT-2's ``h``/``ln_f``, GPT-NeoX's
``final_layer_norm``). The final logit processing (Gemma's soft-capping, Cohere/Granite
logit scales) is read from the config so that our readout equals the model's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BoundaryError, UnsupportedArchitectureError

# model_type -> (layers attribute, final norm attribute) where generic discovery is not enough
_REGISTRY: dict[str, tuple[str, str]] = {
    "gpt2": ("h", "ln_f"),
    "gpt_neox": ("layers", "final_layer_norm"),
    "gptj": ("h", "ln_f"),
    "falcon": ("h", "ln_f"),
    "bloom": ("h", "ln_f"),
}
_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "norm_f", "final_norm", "final_layernorm", "layer_norm", "layernorm")


def is_peft_model(model) -> bool:
    """Whether ``model`` is a PEFT wrapper (``PeftModel`` and its task classes), not a transformers model."""
    return type(model).__module__.startswith("peft")


def unwrap_peft(model: nn.Module) -> nn.Module:
    """Return the transformers model under a PEFT wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    if get_base is not None and is_peft_model(model):
        return get_base()
    return model


@dataclass
class Anatomy:
    """Handles on the parts of one causal LM that cross-patching touches."""

    model: nn.Module  # the transformers *ForCausalLM (PEFT wrapper removed)
    backbone: nn.Module  # what a full pass runs (the decoder stack; a VLM's multimodal model)
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    logit_softcap: float | None = None
    logit_scale: float | None = None  # logits are multiplied by this (Cohere)
    logit_divisor: float | None = None  # logits are divided by this (Granite)
    # what a decoder layer returns, learned from the first forward pass: None unknown yet, 0 a tensor,
    # n a tuple of n items (the hidden states first; GLM-DSA's also its top-k indices)
    layer_output_items: int | None = None
    late_backbone: nn.Module | None = None  # the language tower late-only passes run (default: backbone)
    image_token_id: int | None = None  # a vision-language model's image placeholder token

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        cfg = text_config(self.model.config)
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))  # noqa: B009 - GPT-2's name

    def final_logits(self, final_states: torch.Tensor) -> torch.Tensor:
        """Logits from pre-norm final states, with the model's own final processing, in fp32."""
        logits = self.lm_head(self.final_norm(final_states))
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logit_divisor is not None:
            logits = logits / self.logit_divisor
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits.float()


def _find_layers(backbone: nn.Module, n_layers: int | None, preferred: str | None) -> nn.ModuleList:
    if preferred is not None and isinstance(getattr(backbone, preferred, None), nn.ModuleList):
        return getattr(backbone, preferred)
    lists = [m for _, m in backbone.named_children() if isinstance(m, nn.ModuleList)]
    if n_layers is not None:
        lists = [m for m in lists if len(m) == n_layers] or lists
    if not lists:
        raise UnsupportedArchitectureError(
            f"no decoder layer list found in {type(backbone).__name__}; "
            "add the architecture to crosspatch.models.anatomy._REGISTRY"
        )
    return max(lists, key=len)


_POST_NORM_LAYOUT = ("its decoder has no final norm, or projects its states after it (OPT-350m's layout: project_out); "
                     "crosspatch reads a model out as final norm + lm_head, which the other OPT sizes are")


# model types whose layers crosspatch finds but does not run exactly (tested on tiny models of the type)
_INEXACT = {"ctrl": "crosspatch's cached greedy decoding of CTRL does not reproduce the model's own continuations "
                    "(a tiny CTRL's histories differ from transformers' generate at margins of 0.02-0.07 logits)"}


def _decoder_stack(tower: nn.Module) -> nn.Module:
    """The module holding the decoder layers: ``tower`` itself, or its ``decoder`` (OPT's
    ``model.decoder``). A stack that projects its states after the final norm (``project_out``,
    OPT-350m) or has no final norm at all is refused by name: the readout is final norm + lm_head."""
    decoder = getattr(tower, "decoder", None)
    if any(isinstance(m, nn.ModuleList) for m in tower.children()) or not isinstance(decoder, nn.Module):
        return tower
    if getattr(decoder, "project_out", None) is not None or getattr(decoder, "final_layer_norm", False) is None:
        raise UnsupportedArchitectureError(f"{type(tower).__name__}: {_POST_NORM_LAYOUT}")
    return decoder


def text_config(config):
    """The language model's config (a vision-language config's ``text_config``; else itself)."""
    inner = getattr(config, "text_config", None)
    return inner if inner is not None and getattr(config, "vision_config", None) is not None else config


# model types whose layers keep a recurrent (state-space, linear-attention or convolution) state
# instead of, or beside, a key-value cache keyed by position
_RECURRENT_MODEL_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "rwkv", "jamba", "zamba", "zamba2", "bamba", "falcon_h1", "nemotron_h",
    "granitemoehybrid", "lfm2", "lfm2_moe", "qwen3_next", "recurrent_gemma", "xlstm", "minimax", "plamo2",
})


def _attends_over_positions(layer_type: str) -> bool:
    """Whether a config's ``layer_types`` entry is attention with a key and a value per position
    (full, sliding, chunked, indexed, ...), not a recurrent state (linear attention, Mamba,
    convolution) or a compressed one (DeepSeek-V4's attention over compressed blocks of positions,
    which left padding shifts)."""
    return layer_type.endswith("attention") and layer_type != "linear_attention" and "compressed" not in layer_type


# the heads of checkpoints that classify rather than generate (a reward model is a sequence classifier)
NON_GENERATIVE_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                        "ForMultipleChoice", "RewardModel")


def config_value(obj, key: str, default=None):
    """``key`` of a transformers config object or a parsed config.json alike."""
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def check_supported(config) -> None:
    """Refuse by name the models the method or crosspatch's batching cannot run exactly:
    classifiers' checkpoints (reward models: no language-model head; from a config.json),
    encoder-decoder models (the method compares decoder-only causal LMs), and state-space,
    recurrent or hybrid models (their cache is not a key-value cache over positions, so batched
    decoding with left padding would be silently wrong). ``config``: a transformers config or
    a parsed config.json (checked before any model loads)."""
    model_type = str(config_value(config, "model_type") or "")
    # a checkpoint saved as a classifier (a loaded model is what it is, whatever it was saved as)
    named = config_value(config, "architectures") if isinstance(config, dict) else None
    heads = [str(a) for a in named] if isinstance(named, list) else [named] if isinstance(named, str) else []
    if heads and all(a.endswith(NON_GENERATIVE_HEADS) for a in heads):
        raise UnsupportedArchitectureError(
            f"{heads[0]}: a classifier's checkpoint (a reward model, a sequence or token classifier), with no "
            "language-model head to decode with; crosspatch compares causal language models: give the generative "
            "model (…ForCausalLM)")
    text = config_value(config, "text_config")
    text_type = str(config_value(text, "model_type") or "")
    if config_value(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(
            f"{model_type or 'this model'} is an encoder-decoder model; crosspatch compares decoder-only causal "
            "language models (a base and its fine-tuned descendant)")
    if model_type in _RECURRENT_MODEL_TYPES or text_type in _RECURRENT_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{model_type}: state-space, recurrent and hybrid models are not supported (their cache is not a "
            "key-value cache over positions, so batched decoding would not be exact); attention-only "
            "decoders are")
    stateful = sorted({str(kind) for cfg in (config, text) for kind in config_value(cfg, "layer_types") or []
                       if not _attends_over_positions(str(kind))})
    if stateful:
        raise UnsupportedArchitectureError(
            f"{model_type}: its {', '.join(stateful)} layers keep a recurrent or compressed state instead of a key "
            "and a value per position, so batched decoding with padding would not be exact; state-space, "
            "recurrent, hybrid and compressed-attention models are not supported, attention-only decoders are")
    streams = next((f"{key} = {value}" for cfg in (config, text) for key in ("altup_num_inputs", "hc_mult")
                    if isinstance(value := config_value(cfg, key), int) and value > 1), None)
    shared = next((value for cfg in (config, text) if isinstance(value := config_value(cfg, "num_kv_shared_layers"), int)
                   and value > 0), None)
    if streams or shared:
        why = (f"its residual stream is several streams ({streams}), not one state per position"
               if streams else f"its last {shared} layers attend with the keys and values of earlier layers")
        raise UnsupportedArchitectureError(
            f"{model_type}: {why}, so a late stack cannot run on another model's upstream state (Gemma 3n's AltUp "
            "and shared KV cache, DeepSeek-V4's hyper-connections); models with one residual stream and "
            "per-layer caches are supported")
    projected = config_value(config, "word_embed_proj_dim") not in (None, config_value(config, "hidden_size"))
    if model_type == "opt" and (projected or config_value(config, "do_layer_norm_before") is False):
        raise UnsupportedArchitectureError(f"opt: {_POST_NORM_LAYOUT}")
    if model_type in _INEXACT:
        raise UnsupportedArchitectureError(f"{model_type}: {_INEXACT[model_type]}; refused rather than run inexactly")
    if config_value(config, "vision_config") is not None:
        # multimodal rotary positions (Qwen2-VL's M-RoPE) depend on the image grid, while the
        # batched passes give every token a 1-D position: refused rather than run inexactly
        rope = config_value(text, "rope_scaling") or config_value(text, "rope_parameters") or {}
        if (isinstance(rope, dict) and "mrope_section" in rope) or "vl" in model_type.split("_"):
            raise UnsupportedArchitectureError(
                f"{model_type}: vision-language models with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL, "
                "Qwen3-VL) are not supported; LLaVA-style and Gemma 3 pairs are")


def check_boundaries_supported(config, boundaries, hint: str = "") -> None:
    """Each boundary must start a late stack that reads nothing of the upstream model but its
    residual state. A layer that reuses the top-k positions an earlier layer of its model selected
    (GLM-5's indexed sparse attention: ``indexer_types[b] == "shared"``) cannot start one: it would
    need the other model's selection too. Refused by name (:class:`BoundaryError`), naming the layers
    that can be boundaries (then ``hint``). ``config``: a transformers config or a parsed config.json."""
    text = config_value(config, "text_config") if config_value(config, "vision_config") is not None else None
    kinds = config_value(text if text is not None else config, "indexer_types")
    if not isinstance(kinds, (list, tuple)):
        return
    for b in boundaries:
        if 0 <= b < len(kinds) and kinds[b] == "shared":
            own = [i for i, kind in enumerate(kinds) if 0 < i and kind != "shared"]
            raise BoundaryError(
                f"boundary {b}: layer {b} reuses the sparse-attention selection (top-k positions) of an earlier "
                f"layer (indexer_types[{b}] = 'shared'), so a late stack starting there would run on the other "
                "model's selection as well as its residual state; give a boundary at a layer with its own indexer"
                + (f": {', '.join(map(str, own[:12]))}{', ...' if len(own) > 12 else ''}" if own else "") + hint)


def find_anatomy(model: nn.Module) -> Anatomy:
    """Locate layers, final norm, lm_head and final logit processing of a causal LM (of a
    vision-language model: of its language tower, whose layers hold the boundary)."""
    from .media import image_token_id, takes_token_types

    lm = unwrap_peft(model)
    full_cfg = getattr(lm, "config", None)
    if full_cfg is None:  # a module of one's own (a wrapper, a plain torch model): no config to read layers from
        inner = next((name for name in ("module", "model", "_orig_mod") if hasattr(lm, name)
                      and isinstance(getattr(lm, name), nn.Module) and hasattr(getattr(lm, name), "config")), None)
        raise UnsupportedArchitectureError(
            f"{type(lm).__name__} is not a transformers model (it has no config): crosspatch reads a causal LM's "
            "layers, final norm and head from its transformers class"
            + (f"; give the model it wraps (its .{inner})" if inner else ""))
    check_supported(full_cfg)
    cfg = text_config(full_cfg)
    model_type = getattr(cfg, "model_type", "")
    prefix = getattr(lm, "base_model_prefix", "model")
    backbone = getattr(lm, prefix, None)
    for fallback in ("model", "transformer", "gpt_neox"):  # prefixes differ across transformers releases
        if isinstance(backbone, nn.Module):
            break
        prefix, backbone = fallback, getattr(lm, fallback, None)
    if not isinstance(backbone, nn.Module):
        head = getattr(lm, "get_output_embeddings", None)
        if callable(head) and head() is None and any(isinstance(m, nn.ModuleList) for m in lm.children()):
            raise UnsupportedArchitectureError(  # (its layers are its own: AutoModel's class, not the causal LM)
                f"{type(lm).__name__} is a bare backbone without an LM head (AutoModel's class): give the causal LM "
                "that wraps it (AutoModelForCausalLM's), whose head reads out the tokens")
        raise UnsupportedArchitectureError(
            f"{type(lm).__name__} has no '{prefix}' backbone module (base_model_prefix)"
        )
    tower = late = backbone
    inner = getattr(backbone, "language_model", None)
    if isinstance(inner, nn.Module) and not any(isinstance(m, nn.ModuleList) for m in backbone.children()):
        tower = inner  # a vision-language model: the decoder layers live in its language model
        # late-only passes skip the vision encoder, unless the multimodal model builds the
        # attention mask itself (image tokens attending to each other, e.g. Gemma 3)
        late = backbone if takes_token_types(backbone) else tower
    tower = _decoder_stack(tower)
    layers_name, norm_name = _REGISTRY.get(model_type, (None, None))
    n_layers = getattr(cfg, "num_hidden_layers", None)
    layers = _find_layers(tower, n_layers, layers_name)
    norm = None
    for name in ((norm_name,) if norm_name else ()) + _NORM_NAMES:
        if name and isinstance(getattr(tower, name, None), nn.Module):
            norm = getattr(tower, name)
            break
    if norm is None:
        raise UnsupportedArchitectureError(f"no final norm found in {type(tower).__name__}")
    lm_head = lm.get_output_embeddings()  # pyright: ignore[reportCallIssue] - a PreTrainedModel method
    if lm_head is None:
        raise UnsupportedArchitectureError(f"{type(lm).__name__} has no output embeddings (lm_head)")
    scale = getattr(cfg, "logit_scale", None)
    divisor = getattr(cfg, "logits_scaling", None)
    return Anatomy(
        model=lm,
        backbone=backbone,
        layers=layers,
        final_norm=norm,
        lm_head=lm_head,
        logit_softcap=getattr(cfg, "final_logit_softcapping", None) or None,
        logit_scale=float(scale) if isinstance(scale, (int, float)) and scale != 1 else None,
        logit_divisor=float(divisor) if isinstance(divisor, (int, float)) and divisor != 1 else None,
        late_backbone=late,
        image_token_id=image_token_id(full_cfg),
    )


def router_name(layer: nn.Module) -> str | None:
    """The path of a mixture-of-experts layer's router inside a decoder layer (``mlp.gate``,
    ``mlp.router``, ``block_sparse_moe.gate``, ...), or None for a dense layer."""
    for name, module in layer.named_modules():
        last = name.split(".")[-1]
        if last in ("gate", "router") and name.count(".") >= 1 and not hasattr(module, "up_proj"):
            return name
    return None
