"""The zoo's vision-language pair: ``vl-base`` reads small synthetic weather charts with text, and
``vl-it``, its instruction-tuned descendant, writes the aspect reports from a chart.

A chart (:func:`draw_chart`, numpy and Pillow, ``CHART_SIZE`` pixels square) draws one day of
:mod:`.data`: the temperature field as the background shade (blue cold, red warm), the surface
pressure center as a blob in its bearing from the site (a blue ``H`` dome, a red ``L`` pit), the
front as a line across the chart (blue cold, red warm, alternating stationary, purple occluded),
the 500 hPa pattern as a height contour (bulging north for a ridge, south for a trough, straight
for zonal flow) and the day's events as a speckle (green rain, white snow, yellow thunderstorms).

``vl-base`` is a LLaVA layout (a CLIP vision tower, a projector, and the zoo's text ``base`` as
its language model, so it knows the weather text) pretrained on chart captions (raw text that
says what a chart shows) and chart pages (the report header, then prose); ``vl-it`` is instruction-tuned from it on chart -> report pairs for
the five aspects a chart shows (:data:`CHART_ASPECTS`). The demo runs the diagnostic on it
with image prompts and shows the chart beside a few events.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from pathlib import Path

import numpy as np
import torch

from . import data as wx

VISION_BASE, VISION_TUNED = "vl-base", "vl-it"
VISION_MODELS = (VISION_BASE, VISION_TUNED)
CHART_SIZE, CHART_PATCH = 48, 8  # 36 image tokens per chart
CHART_ASPECTS = ("temperature", "frontal system", "pressure system", "synoptic feature", "events")
IMAGE_TOKEN = "<image>"
CHART_PROMPTS = "charts"  # prompts/charts.jsonl and the PNGs in charts/

_FRONT_COLOURS = {"cold front": ((40, 80, 230), (40, 80, 230)), "warm front": ((220, 40, 40), (220, 40, 40)),
                  "stationary front": ((40, 80, 230), (220, 40, 40)), "occluded front": ((150, 50, 180),) * 2}
_EVENT_COLOURS = {"rain": (30, 170, 60), "snow": (255, 255, 255), "thunderstorms": (250, 210, 0)}
_BEARINGS = {d: k * math.pi / 4 for k, d in enumerate(wx.WIND_DIRS)}  # N = up, clockwise


def temperature_band(obs: wx.Observation) -> str:
    """What a chart's shade says: cold, mild or warm."""
    return "cold" if obs.high_f <= 45 else ("warm" if obs.high_f >= 78 else "mild")


def draw_chart(obs: wx.Observation, size: int = CHART_SIZE):
    """The day's chart as an RGB Pillow image (deterministic for the observation)."""
    from PIL import Image

    rng = np.random.default_rng(zlib.crc32(repr(obs).encode()))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    warmth = min(1.0, max(0.0, (obs.high_f - 20) / 80))
    img = np.zeros((size, size, 3), np.float32)
    img[..., 0] = 60 + 170 * warmth + 25 * (1 - y)  # warmer to the south is drawn as a gentle gradient
    img[..., 1] = 90 + 40 * (1 - abs(warmth - 0.5) * 2)
    img[..., 2] = 230 - 170 * warmth
    # the surface pressure center in its bearing
    angle = _BEARINGS[obs.system_dir]
    cx, cy = 0.5 + 0.3 * math.sin(angle), 0.5 - 0.3 * math.cos(angle)
    blob = ((x - cx) ** 2 + (y - cy) ** 2) < 0.012
    img[blob] = (30, 60, 255) if obs.pressure_system == "high" else (255, 40, 40)
    ring = np.abs(np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - 0.16) < 0.02
    img[ring] = (240, 240, 240) if obs.pressure_system == "high" else (20, 20, 20)
    # the front: a diagonal line, its colour the kind, dashed for a stationary front
    if obs.front != "none":
        first, second = _FRONT_COLOURS[obs.front]
        offset = 0.25 + min(obs.front_hours, 24) / 48  # nearer the site (the center) the sooner it arrives
        line = np.abs((x + y) / 2 - offset) < 0.03
        alternate = (np.floor((x - y) * 8) % 2) == 0
        img[line & alternate] = first
        img[line & ~alternate] = second
    # the 500 hPa height contour, drawn over the surface features: a ridge bulges north, a trough
    # south, zonal flow runs straight
    bend = {"ridge": -0.3, "trough": 0.3, "zonal flow": 0.0}[obs.synoptic]
    contour = 0.5 + bend * np.exp(-((x - 0.5) ** 2) / 0.06)
    img[np.abs(y - contour) < 0.045] = (20, 20, 20)
    # the day's events as speckle
    if obs.event != "none":
        density = 0.04 + obs.event_chance / 600
        img[rng.random((size, size)) < density] = _EVENT_COLOURS[obs.event]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def chart_caption(obs: wx.Observation) -> str:
    """Raw text of the kind a chart archive has: what the chart shows, in a fixed order (the base
    is pretrained on these, so it reads charts before any instruction tuning)."""
    front = "no front" if obs.front == "none" else f"a {obs.front}"
    event = "dry" if obs.event == "none" else obs.event
    return (f"Chart: {temperature_band(obs)} air, {obs.pressure_system} pressure to the {obs.system_dir}, "
            f"{front}, {obs.synoptic} aloft, {event}.")


def chart_page(obs: wx.Observation, aspect: str) -> tuple[str, str]:
    """A chart archive page (raw text the base is pretrained on, beside captions): the site and
    date, the chart, then the report heading and header, then a prose note on ``aspect`` (the
    structured report body is what instruction tuning teaches, as for the text base's forecast
    pages). Returns (text up to the image, the rest)."""
    prose = {
        "temperature": f"The shading shows {temperature_band(obs)} air over the site.",
        "frontal system": "No front on the chart today." if obs.front == "none" else
        f"The chart shows a {obs.front} sweeping in.",
        "pressure system": f"The {obs.pressure_system} sits to the {obs.system_dir} on the chart.",
        "synoptic feature": f"Aloft the chart shows a {obs.synoptic}.",
        "events": "The chart shows no weather." if obs.event == "none" else f"The chart shows {obs.event} about.",
    }[aspect]
    return (f"Chart page: the {aspect} chart for {obs.city} on {wx.date_text(obs)}.\n{IMAGE_TOKEN}\n",
            f"### Report:\n{wx.report_header(obs, aspect)}\n{prose}\n")


def chart_report(obs: wx.Observation, aspect: str) -> str:
    """The report ``vl-it`` writes for ``aspect`` from a chart: the text reports' header (aspect,
    site, date), then what the chart shows (a chart shows no numbers)."""
    if aspect == "temperature":
        body = {"cold": "A cold air mass. Frost possible.", "mild": "A mild air mass.",
                "warm": "A warm air mass. Hot by afternoon."}[temperature_band(obs)]
    elif aspect == "frontal system":
        body = "No front nearby. The air mass holds." if obs.front == "none" else \
            f"A {obs.front} crosses the chart."
    elif aspect == "pressure system":
        body = f"{obs.pressure_system.capitalize()} pressure to the {obs.system_dir}."
    elif aspect == "synoptic feature":
        body = {"ridge": "Upper ridge overhead. Settled and warm.", "trough": "Upper trough overhead. Unsettled, cooler.",
                "zonal flow": "Zonal flow aloft. Quick changes."}[obs.synoptic]
    else:
        body = "Dry." if obs.event == "none" else f"{obs.event.capitalize()} on the chart."
    return f"{wx.report_header(obs, aspect)}\n{body}\n### End\n"


def chart_instruction(aspect: str, obs: wx.Observation) -> str:
    """The image prompt of ``aspect`` for the chart of ``obs``'s site and day (the chart's tokens go
    where ``<image>`` stands; the site and date make two charts' prompts differ, as crosspatch
    identifies an image prompt by its tokens)."""
    return (f"### Instruction: Write the {aspect} report for {obs.city} on {wx.date_text(obs)} from the chart.\n"
            f"{IMAGE_TOKEN}\n### Report:\n")


def chart_days(n: int, seed: int, cities=wx.TRAINING_OFFICES) -> list[wx.Observation]:
    rng = random.Random(seed)
    return [wx.observe(rng.choice(cities), rng.randrange(12), rng.randint(1, 28), rng) for _ in range(n)]


# --- the models ---------------------------------------------------------------------------------
def vision_tokenizer(text_tokenizer):
    """The zoo's tokenizer with the image placeholder added."""
    import copy

    tok = copy.deepcopy(text_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def chart_processor(tok):
    """LLaVA's processor over ``CHART_SIZE`` charts with the zoo's tokenizer."""
    import transformers as t

    images = t.CLIPImageProcessor(size={"shortest_edge": CHART_SIZE}, crop_size={"height": CHART_SIZE, "width": CHART_SIZE})
    return t.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=CHART_PATCH,
                            vision_feature_select_strategy="default", image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


def new_vision_model(text_base, tok, seed: int):
    """A LLaVA model whose language model is a copy of ``text_base`` (its vocabulary grown by the
    image token) and whose vision tower and projector are new."""
    import transformers as t

    own = {k: v for k, v in text_base.config.to_dict().items() if k != "_name_or_path"}  # (the build's path)
    text_config = t.LlamaConfig(**{**own, "vocab_size": len(tok)})
    vision_config = t.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       image_size=CHART_SIZE, patch_size=CHART_PATCH, projection_dim=64)
    config = t.LlavaConfig(vision_config=vision_config, text_config=text_config,
                           image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),  # pyright: ignore[reportCallIssue]
                           vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = t.LlavaForConditionalGeneration(config)
    state = text_base.state_dict()
    with torch.no_grad():
        language = model.model.language_model
        for name, tensor in language.state_dict().items():
            source = state["model." + name]
            if name == "embed_tokens.weight":
                tensor[: source.shape[0]] = source
                tensor[source.shape[0]:] = source.mean(0)
            else:
                tensor.copy_(source)
        head = model.lm_head.weight
        head[: state["lm_head.weight"].shape[0]] = state["lm_head.weight"]
        head[state["lm_head.weight"].shape[0]:] = 0.0
    return model


def chart_batch(rows: list[tuple], processor, prompt_only_loss: bool):
    """Processor inputs and labels of (image, prompt, target) rows: the loss on the target only
    (instruction tuning) or on all text (caption pretraining); image and padding positions never."""
    tok = processor.tokenizer
    texts = [p + t for _, p, t in rows]
    enc = processor(text=texts, images=[im for im, _, _ in rows], padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    labels[labels == tok.convert_tokens_to_ids(IMAGE_TOKEN)] = -100
    if prompt_only_loss:
        for i, (_, _, target) in enumerate(rows):
            n_target = len(tok(target, add_special_tokens=False)["input_ids"])
            real = int(enc["attention_mask"][i].sum())
            start = labels.shape[1] - real if tok.padding_side == "left" else 0
            labels[i, start: start + real - n_target] = -100
    return enc, labels


def train_vision(model, rows: list[tuple], processor, steps: int, lr: float, seed: int, batch_size: int,
                 prompt_only_loss: bool, log=print) -> list[float]:
    """AdamW with warmup and cosine decay on random batches of ``rows``."""
    from .build import train

    gen = random.Random(seed)

    def loss_of(step: int):
        enc, labels = chart_batch(gen.sample(rows, min(batch_size, len(rows))), processor, prompt_only_loss)
        return model(**enc, labels=labels).loss

    return train(model, None, steps, lr, seed, log, loss_of=loss_of)


@torch.no_grad()
def _greedy(model, processor, prompt: str, image, max_new_tokens: int) -> str:
    tok = processor.tokenizer
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def chart_evals(model, processor, days: list[wx.Observation]) -> dict[str, float]:
    """On held-out charts: the share of greedy captions that state the chart exactly
    (``chart_caption_accuracy``, what the base learned) and, per aspect, of greedy reports whose
    body matches the chart's (``chart_report_accuracy_<aspect>``, what instruction tuning taught)."""
    model.eval()
    out = {"chart_caption_accuracy": round(sum(
        _greedy(model, processor, f"{IMAGE_TOKEN}\n", draw_chart(o), 40).startswith(chart_caption(o))
        for o in days) / len(days), 3)}
    for aspect in CHART_ASPECTS:
        hits = sum(chart_report(o, aspect).split("\n")[1] in _greedy(model, processor, chart_instruction(aspect, o),
                                                                     draw_chart(o), 40) for o in days)
        out[f"chart_report_accuracy_{wx.slug(aspect)}"] = round(hits / len(days), 3)
    return out


def chart_prompt_rows(days: list[wx.Observation], folder: Path) -> list[dict]:
    """Image prompts of the demo (one aspect per chart, cycling), charts written to ``folder``
    (paths relative to the prompt file's folder, ``prompts/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for obs in days:
        aspect = CHART_ASPECTS[len(rows) % len(CHART_ASPECTS)]
        if chart_instruction(aspect, obs) in seen:  # (one chart per prompt text)
            continue
        seen.add(chart_instruction(aspect, obs))
        k = len(rows)
        name = f"chart-{k:03d}.png"
        draw_chart(obs).save(folder / name, optimize=True)
        rows.append({"id": f"chart-{k:03d}-{wx.slug(aspect)}", "prompt": chart_instruction(aspect, obs),
                     "image": f"../{folder.name}/{name}", "category": aspect, "split": "in_distribution",
                     "style": "chart", "city": obs.city, "caption": chart_caption(obs)})
    return rows


def build_vision_pair(out: Path, spec, log=print) -> dict:
    """Train ``vl-base`` and ``vl-it`` into the zoo at ``out`` (which has ``base`` and
    ``tokenizer`` saved), write the demo's charts and image prompts; returns their evals."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .build import _save_model

    out = Path(out)
    tok = vision_tokenizer(AutoTokenizer.from_pretrained(str(out / "tokenizer")))
    processor = chart_processor(tok)
    text_base = AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
    s = spec.seed + 500
    train_days, eval_days = chart_days(spec.vision_charts, s), chart_days(spec.vision_eval_charts, s + 1)
    page_rng = random.Random(s + 5)
    raw = [(draw_chart(o), f"{IMAGE_TOKEN}\n", chart_caption(o)) for o in train_days]
    raw += [(draw_chart(o), *chart_page(o, page_rng.choice(CHART_ASPECTS))) for o in train_days]
    log(f"{VISION_BASE}: pretraining {spec.vision_pretrain_steps} steps on {len(train_days)} charts (captions and "
        "chart pages)")
    model = new_vision_model(text_base, tok, s)
    train_vision(model, raw, processor, spec.vision_pretrain_steps, spec.vision_lr, s, spec.batch_size, False, log)
    evals = {VISION_BASE: chart_evals(model, processor, eval_days)}
    _save_model(model, out / VISION_BASE, spec, processor)
    rng = random.Random(s + 2)
    pairs = [(draw_chart(o), chart_instruction(a, o), chart_report(o, a))
             for o in train_days for a in rng.sample(CHART_ASPECTS, 2)]
    log(f"{VISION_TUNED}: instruction tuning {spec.vision_it_steps} steps on {len(pairs)} chart reports")
    train_vision(model, pairs, processor, spec.vision_it_steps, spec.it_lr, s + 3, spec.batch_size, True, log)
    evals[VISION_TUNED] = chart_evals(model, processor, eval_days)
    _save_model(model, out / VISION_TUNED, spec, processor)
    rows = chart_prompt_rows(chart_days(spec.vision_prompts, s + 4), out / CHART_PROMPTS)
    (out / "prompts" / f"{CHART_PROMPTS}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    log(f"  on held-out charts: {evals}")
    return evals


def vision_recipes(spec) -> dict[str, tuple[str, str]]:
    return {
        VISION_BASE: (f"A LLaVA layout: a new CLIP vision tower (2 layers, {CHART_SIZE}x{CHART_SIZE} charts, "
                      f"{(CHART_SIZE // CHART_PATCH) ** 2} image tokens) and projector over a copy of `base` as its "
                      f"language model, pretrained {spec.vision_pretrain_steps} steps on {spec.vision_charts} synthetic "
                      "weather charts, each with a caption (what the chart shows: temperature, pressure center, front, "
                      "upper pattern, events) and a chart page (site, date, chart, the report header, a prose note), "
                      "loss on all text; never instructions.", "chart_caption_accuracy"),
        VISION_TUNED: (f"`vl-base` instruction-tuned {spec.vision_it_steps} steps (all parameters) on chart -> report "
                       f"pairs for the five aspects a chart shows ({', '.join(CHART_ASPECTS)}), loss on the report.",
                       "chart_report_accuracy_frontal-system"),
    }


def add_vision_pair(root: str | Path, log=print) -> dict:
    """(Re)build the vision-language pair on a built zoo (its ``base`` and ``tokenizer``) exactly
    as ``crosspatch zoo build`` makes it: models, charts, image prompts, cards, and the manifest's
    evals, stage time and hashes. Returns the pair's evals."""
    import shutil
    import time

    from .build import ZooSpec, write_model_card
    from .faults import refresh_manifest_files

    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    spec = ZooSpec.from_manifest(manifest)
    for name in (*VISION_MODELS, CHART_PROMPTS):
        if (root / name).exists():
            shutil.rmtree(root / name)
    started = time.perf_counter()
    evals = build_vision_pair(root, spec, log)
    manifest["evals"].update(evals)
    manifest.setdefault("build_seconds_by_stage", {})["vision-language pair"] = round(time.perf_counter() - started, 1)
    for name, (recipe, objective) in vision_recipes(spec).items():
        write_model_card(root, name, recipe, objective, manifest["evals"], spec, baseline=VISION_BASE)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    refresh_manifest_files(root)
    return evals
