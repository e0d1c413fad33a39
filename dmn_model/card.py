"""The model card (``README.md``) of a model folder, from its ``config.json``."""

from __future__ import annotations

from typing import Any

#: train_config fields shown as dmn-train flags in the card, in this order
_TRAIN_FLAGS = ("shards", "preset", "split", "size", "batch_size", "accum_iters", "steps",
                "epochs", "lr", "schedule", "warmup_steps", "flip", "aux_weight", "init_from")


def training_command(train_config: dict[str, Any]) -> str:
    """The run's main settings written as a ``dmn-train`` command line."""
    parts = ["dmn-train"]
    for key in _TRAIN_FLAGS:
        value = train_config.get(key)
        if value is None or value is False or (key == "steps" and value == 0):
            continue
        if key == "epochs" and train_config.get("steps"):
            continue
        flag = "--" + key.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    return " ".join(parts)


def model_card(config: dict[str, Any], params: dict[str, int]) -> str:
    """Markdown with a Hub metadata header: licence, dataset, metrics, training command, use."""
    card = config.get("card") or {}
    model = config["model"]
    licence = card.get("license") or "other"
    dataset = card.get("dataset") or "unknown"
    train_config = card.get("train_config") or {}
    lines = [
        "---",
        f"license: {licence}",
        "library_name: dmn",
        "pipeline_tag: image-segmentation",
        "tags: [referring-image-segmentation, dmn]",
        "---",
        "",
        "# DMN referring-segmentation model",
        "",
        "Dynamic Multimodal Network (Margffoy-Tuay et al., ECCV 2018), exported by `dmn-export`.",
        "",
        "## Model",
        "",
        f"- backbone: `{model['backbone']}`, {'high' if model.get('high_res') else 'low'}-res "
        f"output, input side {config['input_size']} px, threshold {config['threshold']:g}",
        f"- parameters: {sum(params.values()) / 1e6:.2f} M "
        f"({', '.join(f'{k} {v / 1e6:.2f} M' for k, v in params.items())})",
        f"- vocabulary: {config['vocab_size']} tokens (sha256 `{config['vocab_sha256'][:16]}…`)",
        "",
        "## Training data",
        "",
        f"- dataset: {dataset} (shards `{card.get('shards', 'unknown')}`), split "
        f"`{train_config.get('split', 'unknown')}`",
        f"- checkpoint: `{card.get('checkpoint', 'unknown')}` at step {card.get('step', '?')}",
        "",
        "## Evaluation",
        "",
    ]
    metrics = card.get("metrics") or []
    if metrics:
        lines += ["| split | sentences | threshold | overall IoU | mean IoU | P@0.5 | P@0.7 | "
                  "P@0.9 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in metrics:
            split = m["split"] + (" (language ablation)" if m.get("ablate_language") else "")
            p = m.get("precision") or {}
            lines.append(f"| {split} | {m.get('sentences')} | {m['threshold']:g} | "
                         f"{m['overall_iou']:.4f} | {m['mean_iou']:.4f} | "
                         f"{p.get('0.5', float('nan')):.4f} | {p.get('0.7', float('nan')):.4f} | "
                         f"{p.get('0.9', float('nan')):.4f} |")
        lines.append("")
        lines.append("Computed by `dmn-eval` at the original image resolution; the step of each "
                     "evaluation is in `config.json` (`card.metrics`).")
    else:
        lines.append("No `dmn-eval` results were found in the run when it was exported.")
    lines += ["", "## Training command", ""]
    if train_config:
        lines += ["```", training_command(train_config), "```", "",
                  "All training settings are in `config.json` (`card.train_config`)."]
    else:
        lines.append("Unknown (not recorded).")
    lines += [
        "", "## Use", "",
        "```python", "from dmn_model import Segmenter", "",
        'seg = Segmenter.from_pretrained("THIS_FOLDER_OR_REPO_ID")',
        'pred = seg.predict("image.jpg", "the man on the left")[0]',
        "pred.mask  # (H, W) bool at the image's resolution", "```", "",
        "```sh", 'dmn-predict --model THIS_FOLDER_OR_REPO_ID image.jpg --phrase "the man on the '
        'left" --out predictions/', "```", "",
        "EXIF orientation is ignored by default, as in the training data (masks use the stored "
        "pixel grid); pass `exif_transpose=True` / `--exif-transpose` to apply it.",
        "", "## Licence", "",
        f"`{licence}`. The weights were trained on the dataset above: its terms (and those of its "
        "images) apply to them too.", "",
    ]
    return "\n".join(lines)
