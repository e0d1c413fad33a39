"""Use a trained DMN: load it from a model folder, a run, a checkpoint or the Hugging Face Hub,
and segment the objects that phrases refer to in an image.

A **model folder** (``dmn-export``, :meth:`Segmenter.save_pretrained`) holds everything needed to
predict, and nothing that can run code::

    config.json        {"format": "dmn-model/1", "model": DMNConfig fields, "input_size": S,
                        "threshold", "normalization": {"mean", "std"} (0..1 RGB, informative:
                        the backbone defines it), "tokenizer": {...}, "vocab_size",
                        "vocab_sha256", "card": {what the model card says}}
    model.safetensors  the DMN state dict
    vocab.json         the vocabulary, tokens in id order (<pad> = 0, <unk> = 1)
    README.md          the model card

Preprocessing is the shard stream's (``dmn_data.transforms``): the longest side resized to ``S``
(bilinear; JPEG files through the same draft-mode decode), padded bottom/right to ``S × S``. EXIF
orientation is ignored by default, as the datasets do (their masks use the stored pixel grid);
``exif_transpose=True`` applies it first. Post-processing is :mod:`dmn_model.postprocess`, the
evaluator's, so a mask here equals the one ``dmn-eval`` scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from dmn_data.images import to_rgb
from dmn_data.keys import PAD_ID, UNK_ID
from dmn_data.tokens import tokenize, vocab_bytes
from dmn_data.transforms import decode_resized, resized_shape

from .checkpoint import CheckpointError, load_checkpoint, load_weights, run_checkpoint
from .config import DMNConfig
from .network import DMN
from .postprocess import binary_mask, original_logits, original_logits_batch, to_input_size

FOLDER_FORMAT = "dmn-model/1"
CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME, CARD_NAME = (
    "config.json", "model.safetensors", "vocab.json", "README.md")
#: what a model folder must hold to predict (the card is documentation)
REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")



@dataclass
class Prediction:
    """One phrase's result on one image of size ``H × W``.

    Attributes:
        phrase: the phrase as given.
        tokens: its tokens (``dmn_data.tokens.tokenize``).
        unknown_words: tokens not in the vocabulary (fed to the model as ``<unk>``).
        probs: ``(H, W)`` float32 foreground probability at the image's own resolution.
        mask: ``(H, W)`` bool, ``probs > threshold``.
        score: mean probability inside the mask (0.0 when the mask is empty).
        explain: with ``explain=True``, per token ``(word, response)``: the mean response of
            that word's K dynamic filters over the image, ``(H, W)`` float32 scaled to [0, 1].
    """

    phrase: str
    tokens: list[str]
    unknown_words: list[str]
    probs: np.ndarray
    mask: np.ndarray
    score: float
    explain: list[tuple[str, np.ndarray]] | None = None


class Segmenter:
    """A DMN in eval mode with its vocabulary, input size and threshold.

    Args:
        model: the network (moved to ``device``, set to eval mode).
        vocab: tokens in id order; ``len(vocab)`` must be the model's embedding count.
        input_size: the model input side ``S`` (the training size).
        threshold: probability above which a pixel is in the mask.
        device: ``None`` = CUDA if available, else CPU.
        dtype: ``None``/``"fp32"`` or ``"bf16"`` (autocast on ``device``).
        card: what the model card reports (dataset, split, metrics, training command, licence).
    """

    def __init__(self, model: DMN, vocab: list[str], *, input_size: int, threshold: float = 0.5,
                 device: str | torch.device | None = None, dtype: str | None = None,
                 card: dict[str, Any] | None = None) -> None:
        if model.embedding.num_embeddings != len(vocab):
            raise CheckpointError(f"the vocabulary has {len(vocab)} tokens, the model "
                                  f"{model.embedding.num_embeddings}: they do not belong together")
        if dtype not in (None, "fp32", "bf16"):
            raise ValueError(f"dtype must be None, 'fp32' or 'bf16', got {dtype!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.device = torch.device(device if device is not None
                                   else "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.vocab = list(vocab)
        self.index = {tok: i for i, tok in enumerate(self.vocab)}
        self.input_size = int(input_size)
        self.threshold = float(threshold)
        self.dtype = dtype or "fp32"
        self.card = dict(card or {})

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, device: str | torch.device | None = None,
                        dtype: str | None = None, local_files_only: bool = False,
                        revision: str | None = None, vocab: str | os.PathLike | None = None
                        ) -> Segmenter:
        """Load from a model folder, a run directory (its ``best.pt``, else ``last.pt``), a
        checkpoint file, or a Hugging Face Hub repo id (``user/name``, fetched into the usual
        Hub cache; ``HF_HUB_OFFLINE=1`` or ``local_files_only`` use the cache alone).

        ``vocab``: the shards' ``vocab.json`` for a checkpoint that predates stored vocabularies
        (default: the one in the shards the run was trained on, when it is still there).

        Raises:
            CheckpointError: one line naming what was tried, for anything that cannot be loaded.
        """
        path = Path(source)
        if path.is_dir():
            # A run directory also holds a config.json (the training one): checkpoints/ decides.
            if (path / "checkpoints").is_dir():
                return cls._from_checkpoint(run_checkpoint(path), path, device=device,
                                            dtype=dtype, vocab=vocab)
            if (path / CONFIG_NAME).exists() or (path / WEIGHTS_NAME).exists():
                return cls._from_folder(path, device=device, dtype=dtype)
            raise CheckpointError(f"{path} is neither a model folder ({', '.join(REQUIRED_FILES)})"
                                  " nor a run directory (checkpoints/best.pt or last.pt)")
        if path.is_file():
            run = path.parent.parent if path.parent.name == "checkpoints" else None
            return cls._from_checkpoint(path, run, device=device, dtype=dtype, vocab=vocab)
        if _REPO_ID.match(str(source)) and not str(source).startswith((".", "/")):
            folder = _hub_snapshot(str(source), revision=revision,
                                   local_files_only=local_files_only)
            return cls._from_folder(folder, device=device, dtype=dtype, name=str(source))
        raise CheckpointError(f"{source} does not exist: pass a model folder, a run directory, "
                              "a checkpoint file or a Hugging Face Hub repo id (user/name)")

    @classmethod
    def _from_folder(cls, folder: Path, *, device, dtype, name: str | None = None) -> Segmenter:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        name = name or str(folder)
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise CheckpointError(f"model folder {name} is incomplete: it lacks "
                                  f"{', '.join(missing)} (write it with dmn-export)")
        try:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            vocab = json.loads((folder / VOCAB_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"model folder {name}: unreadable JSON ({err})") from None
        if not isinstance(config, dict) or config.get("format") != FOLDER_FORMAT:
            found = config.get("format") if isinstance(config, dict) else None
            raise CheckpointError(f"{name}/{CONFIG_NAME}: format {found!r}, expected "
                                  f"{FOLDER_FORMAT!r} (write it with dmn-export)")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise CheckpointError(f"{name}/{VOCAB_NAME} is not a list of tokens")
        model = _build_model(config.get("model", {}), len(vocab), name)
        try:
            weights = load_file(str(folder / WEIGHTS_NAME))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{name}/{WEIGHTS_NAME} is unreadable or corrupt "
                                  f"({str(err).splitlines()[0][:200]})") from None
        load_weights(model, weights, name)
        return cls(model, vocab, input_size=int(config["input_size"]),
                   threshold=float(config.get("threshold", 0.5)), device=device, dtype=dtype,
                   card=config.get("card"))

    @classmethod
    def _from_checkpoint(cls, path: Path, run: Path | None, *, device, dtype, vocab=None
                         ) -> Segmenter:
        ckpt = load_checkpoint(path)
        train_config = ckpt.get("train_config") or {}
        tokens = _checkpoint_vocab(ckpt, path, vocab)
        model = _build_model(ckpt["model_config"], len(tokens), str(path))
        load_weights(model, ckpt["model"], path)
        size = train_config.get("size")
        if size is None:
            raise CheckpointError(f"{path} does not record its input size (train_config.size)")
        card = _card_from_run(ckpt, path, run)
        return cls(model, tokens, input_size=int(size),
                   threshold=float(train_config.get("threshold", 0.5)), device=device,
                   dtype=dtype, card=card)

    # ---- saving -------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds (see the module docstring)."""
        mean = (self.model.pixel_mean.flatten() / 255).tolist()
        std = (self.model.pixel_std.flatten() / 255).tolist()
        return {
            "format": FOLDER_FORMAT,
            "model": dataclasses.asdict(self.model.config),
            "input_size": self.input_size,
            "threshold": self.threshold,
            "normalization": {"mean": mean, "std": std},
            "tokenizer": {"function": "dmn_data.tokens.tokenize", "lowercase": True,
                          "pattern": r"\w+|[^\w\s]", "pad_id": PAD_ID, "unk_id": UNK_ID},
            "vocab_size": len(self.vocab),
            "vocab_sha256": hashlib.sha256(vocab_bytes(self.vocab)).hexdigest(),
            "card": self.card,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write a model folder (config.json, model.safetensors, vocab.json, README.md)."""
        from safetensors.torch import save_file

        from .card import model_card

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(weights, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        (out / VOCAB_NAME).write_bytes(vocab_bytes(self.vocab))
        config = self.config_dict()
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        (out / CARD_NAME).write_text(model_card(config, self.model.param_counts()),
                                     encoding="utf-8")
        return out

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None,
                    commit_message: str = "Upload DMN model folder") -> Any:
        """Create ``repo_id`` on the Hub if needed and upload the model folder to it; returns
        ``HfApi.upload_folder``'s commit info."""
        import huggingface_hub

        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                                     revision=revision, commit_message=commit_message)

    # ---- prediction ---------------------------------------------------------------------------

    def encode_phrase(self, phrase: str) -> tuple[list[str], list[int], list[str]]:
        """``(tokens, ids, unknown words)`` as the data pipeline encodes a sentence.

        Raises:
            ValueError: the phrase has no words.
        """
        if not isinstance(phrase, str):
            raise ValueError(f"a phrase must be a string, got {type(phrase).__name__}")
        tokens = list(tokenize(phrase))
        if not tokens:
            raise ValueError(f"phrase {phrase!r} is empty: give at least one word")
        ids = [self.index.get(t, UNK_ID) for t in tokens]
        unknown = list(dict.fromkeys(t for t in tokens if t not in self.index))
        return tokens, ids, unknown

    def preprocess(self, image: Any, exif_transpose: bool = False
                   ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """``image`` → ``((1, 3, S, S) uint8`` padded input, ``(h', w')`` resized size, ``(H, W)``
        original size), exactly as the shard stream prepares an image.

        Raises:
            ValueError: unreadable file or an array that is not ``(H, W, 3)`` uint8.
        """
        size = self.input_size
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            try:
                data = path.read_bytes()
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
                    if exif_transpose:
                        rgb = _resize(to_rgb(ImageOps.exif_transpose(im)), size)
                if not exif_transpose:
                    rgb = decode_resized(data, height, width, size)
            except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
                reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:150]
                raise ValueError(f"cannot read image {path}: {reason}") from None
        elif isinstance(image, Image.Image):
            im = ImageOps.exif_transpose(image) if exif_transpose else image
            rgb = _resize(to_rgb(im), size)
        elif isinstance(image, np.ndarray):
            rgb = _resize(_array_image(image), size)
        else:
            raise ValueError(f"image must be a path, a PIL image or a uint8 array, got "
                             f"{type(image).__name__}")
        if rgb.size == 0 or min(rgb.shape[:2]) < 1:
            raise ValueError("the image is empty")
        orig = _orig_size(image, rgb, exif_transpose)
        h, w = rgb.shape[:2]
        padded = np.zeros((1, 3, size, size), dtype=np.uint8)
        padded[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        return torch.from_numpy(padded), (h, w), orig

    @torch.inference_mode()
    def predict(self, image: Any, phrases: str | Sequence[str], *, explain: bool = False,
                threshold: float | None = None, exif_transpose: bool = False
                ) -> list[Prediction]:
        """Segment what each phrase refers to; the visual backbone runs once for all phrases.

        Args:
            image: a path, a PIL image, or an ``(H, W, 3)`` uint8 RGB array (``(H, W)`` grey
                and ``(H, W, 4)`` RGBA arrays are converted).
            phrases: one phrase or a list of them.
            explain: also return each word's dynamic-filter response map.
            threshold: mask threshold (default: the model's, usually 0.5).
            exif_transpose: apply the EXIF orientation first (off by default, as the datasets).

        Returns:
            one :class:`Prediction` per phrase, in order, maps at the image's ``(H, W)``.

        Raises:
            ValueError: unreadable image, empty phrase, bad threshold.
        """
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        if not phrases:
            raise ValueError("give at least one phrase")
        thr = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= thr < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {thr}")
        encoded = [self.encode_phrase(p) for p in phrases]
        pixels, resized, orig = self.preprocess(image, exif_transpose)
        longest = max(len(ids) for _, ids, _ in encoded)
        tokens = torch.full((len(phrases), longest), PAD_ID, dtype=torch.int64)
        for i, (_, ids, _) in enumerate(encoded):
            tokens[i, :len(ids)] = torch.tensor(ids)
        lengths = torch.tensor([len(ids) for _, ids, _ in encoded], dtype=torch.int64)
        pixels, tokens, lengths = (t.to(self.device) for t in (pixels, tokens, lengths))
        captured: dict[str, torch.Tensor] = {}
        hook = (self.model.synthesis.register_forward_pre_hook(_capture(captured), with_kwargs=True)
                if explain else None)
        try:
            with self._autocast():
                features = self.model.encode_image(
                    self.model.normalize(pixels),
                    torch.tensor([resized], dtype=torch.int64, device=self.device))
                logits = self.model.segment(
                    features, tokens, lengths,
                    image_index=torch.zeros(len(phrases), dtype=torch.int64, device=self.device))
        finally:
            if hook is not None:
                hook.remove()
        side = (self.input_size, self.input_size)
        logits = to_input_size(logits, side)
        responses = _word_responses(self.model, captured) if explain else None
        # All phrases at once: the same per-phrase maps, in one call per step.
        all_probs = torch.sigmoid(original_logits_batch(logits, resized, orig))  # (B, H, W)
        all_masks = binary_mask(all_probs, thr)
        # threshold keeps x where x > thr, the binary_mask rule: the sum inside each mask.
        sums = F.threshold(all_probs, thr, 0.0).flatten(1).sum(1).tolist()
        all_probs, all_masks = all_probs.cpu().numpy(), all_masks.cpu().numpy()
        counts = np.count_nonzero(all_masks.reshape(len(phrases), -1), axis=1).tolist()
        out = []
        for i, (phrase, (toks, _, unknown)) in enumerate(zip(phrases, encoded)):
            probs, mask = all_probs[i], all_masks[i]
            score = sums[i] / counts[i] if counts[i] else 0.0
            words = None
            if responses is not None:
                words = [(tok, _unit(original_logits(
                    to_input_size(responses[i:i + 1, t:t + 1], side), resized, orig)))
                    for t, tok in enumerate(toks)]
            out.append(Prediction(phrase=phrase, tokens=toks, unknown_words=unknown,
                                  probs=probs, mask=mask, score=score, explain=words))
        return out

    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _resize(im: Image.Image, size: int) -> np.ndarray:
    """As ``dmn_data.transforms.decode_resized`` for an already decoded image (no draft mode)."""
    th, tw = resized_shape(im.height, im.width, size)
    if im.size != (tw, th):
        im = im.resize((tw, th), Image.BILINEAR)
    return np.asarray(im)


def _array_image(image: np.ndarray) -> Image.Image:
    """An ``(H, W, 3)`` uint8 RGB array (grey ``(H, W)`` and RGBA ``(H, W, 4)`` are converted,
    alpha dropped) as a PIL RGB image."""
    ok = image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3
                                                          and image.shape[2] in (3, 4)))
    if not ok or min(image.shape[:2]) < 1:
        raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got "
                         f"{image.shape} {image.dtype}")
    return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def _orig_size(image: Any, rgb: np.ndarray, exif_transpose: bool) -> tuple[int, int]:
    """``(H, W)`` of the image as the caller sees it (after the EXIF rotation when asked)."""
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, Image.Image):
        im = ImageOps.exif_transpose(image) if exif_transpose else image
        return im.height, im.width
    with Image.open(image) as im:
        if exif_transpose:
            im = ImageOps.exif_transpose(im)
        return im.height, im.width


def _capture(store: dict[str, torch.Tensor | None]):
    """A forward pre-hook on ``Synthesis`` keeping the tensors its dynamic filters read."""
    def hook(module, args, kwargs):
        names = ("vis", "emb", "hid", "mask_pad", "lengths", "image_index")
        values = dict(zip(names, args)) | kwargs
        store.update({n: values.get(n) for n in ("vis", "emb", "hid", "image_index")})
    return hook


def _word_responses(model: DMN, captured: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """Each word's K dynamic filters applied to the visual map, averaged over K:
    ``(B, T, h, w)`` float32, from the very tensors the forward pass used."""
    vis, emb, hid = (captured[k].float() for k in ("vis", "emb", "hid"))
    filters = model.synthesis.dynamic_filters(emb, hid)  # (B, T, K, C)
    responses = model.synthesis.responses(vis, filters, captured["image_index"])  # (T, B, P, K)
    return responses.mean(dim=-1).transpose(0, 1).reshape(*filters.shape[:2], *vis.shape[-2:])


def _unit(x: torch.Tensor) -> np.ndarray:
    """Scale to [0, 1] (a constant map becomes zeros)."""
    x = x.float()
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.cpu().numpy().astype(np.float32)


def _build_model(model_config: dict[str, Any], vocab_size: int, source: str) -> DMN:
    try:
        return DMN(DMNConfig.from_dict(dict(model_config)), vocab_size)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: its model config is not valid here "
                              f"({str(err).splitlines()[0][:200]})") from None


def _checkpoint_vocab(ckpt: dict, path: Path, vocab: str | os.PathLike | None) -> list[str]:
    """The checkpoint's own vocabulary; for older checkpoints, ``vocab`` or the training shards'
    ``vocab.json``, accepted only when its sha256 is the checkpoint's ``vocab_sha256``."""
    if vocab is None and isinstance(ckpt.get("vocab"), list):
        tokens = [str(t) for t in ckpt["vocab"]]
    else:
        shards = (ckpt.get("train_config") or {}).get("shards")
        candidate = Path(vocab) if vocab is not None else (
            Path(shards) / VOCAB_NAME if shards else None)
        data = candidate.read_bytes() if candidate is not None and candidate.is_file() else None
        if data is None or hashlib.sha256(data).hexdigest() != ckpt["vocab_sha256"]:
            tried = f"{candidate} {'does not match it' if data is not None else 'is missing'}" \
                if candidate is not None else "no shards are recorded"
            raise CheckpointError(
                f"{path} predates stored vocabularies and {tried}: pass the vocab.json of the "
                f"shards it was trained on (dmn-export --vocab FILE; sha256 "
                f"{ckpt['vocab_sha256'][:12]}…)")
        try:
            tokens = json.loads(data)
        except ValueError as err:
            raise CheckpointError(f"{candidate}: unreadable vocabulary ({err})") from None
    if len(tokens) != int(ckpt["vocab_size"]):
        raise CheckpointError(f"{path}: its vocabulary has {len(tokens)} tokens, the model "
                              f"{ckpt['vocab_size']}")
    return tokens


def _card_from_run(ckpt: dict, path: Path, run: Path | None) -> dict[str, Any]:
    """What the model card reports: dataset (from the shards' manifest when still there),
    training settings, and the metrics of the run's evaluations (``<run>/eval/*/metrics.json``)."""
    train_config = ckpt.get("train_config") or {}
    card: dict[str, Any] = {"checkpoint": path.name, "step": ckpt.get("step"),
                            "train_config": train_config, "license": "other", "metrics": []}
    shards = train_config.get("shards")
    if shards:
        card["shards"] = Path(shards).name
        try:
            manifest = json.loads((Path(shards) / "manifest.json").read_text(encoding="utf-8"))
            card["dataset"] = manifest.get("dataset")
        except (OSError, ValueError):
            pass
    if run is not None:
        for metrics_path in sorted(Path(run).glob("eval/*/metrics.json")):
            try:
                m = json.loads(metrics_path.read_text(encoding="utf-8"))
                card["metrics"].append({
                    "split": m["split"], "ablate_language": bool(m.get("ablate_language")),
                    "sentences": m.get("sentences"), "threshold": m["fixed"]["threshold"],
                    "overall_iou": m["fixed"]["overall_iou"], "mean_iou": m["fixed"]["mean_iou"],
                    "precision": m["fixed"]["precision"], "step": m.get("step")})
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return card


def _hub_snapshot(repo_id: str, *, revision: str | None, local_files_only: bool) -> Path:
    """The repo's model folder in the Hub cache (downloaded unless offline or local-only)."""
    import huggingface_hub

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[*REQUIRED_FILES, CARD_NAME],
            local_files_only=local_files_only or offline)
    except Exception as err:  # the hub raises many kinds (offline, 404, auth, network)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        how = "in the local Hugging Face cache" if local_files_only or offline else "on the Hub"
        raise CheckpointError(f"{repo_id} is not a local path, and no model {repo_id!r} was "
                              f"found {how} ({type(err).__name__}: {first})") from None
    return Path(folder)
