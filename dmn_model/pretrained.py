"""Where a fresh run's backbone weights come from (``dmn-train --pretrained``).

:func:`resolve_weights` turns the request into one local file - from the Hugging Face cache
(downloading into it unless ``HF_HUB_OFFLINE=1``), or a file the user names - and fails with one
line naming what was tried and how to fix it. It runs before any data is read.
:func:`load_backbone_weights` then loads that file into a built DMN's backbone through timm's own
loading path (``timm.create_model(pretrained=True)``: the same cache lookup, key filters and
adaptations as any timm user gets) and returns a record of it for the checkpoint.

Requests (``TrainConfig.pretrained``):

- ``auto``: timm's default pretrained tag of the backbone (``dpn92`` → ``dpn92.mx_in1k``, the
  ImageNet-5k-pretrained, 1k-finetuned "extra" weights the original DMN used); random init for
  ``tiny_cnn``, which has no pretrained weights.
- a timm tag of the same architecture (``dpn92.mx_in1k``, ``resnet18.tv_in1k``).
- ``hf-hub:<repo id>``: a Hugging Face repo holding timm weights for the architecture.
- a local ``.safetensors`` / ``.pth`` / ``.bin`` file: a full timm state dict.
- ``none``: random init.

Loading a trained model (checkpoint, model folder, Hub id) never comes here: its backbone
weights are in its state dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import normalization, timm_features
from .config import TINY_CNN, DMNConfig

AUTO, NONE = "auto", "none"
HF_PREFIX = "hf-hub:"
#: What timm's ``load_state_dict_from_hf`` tries, in its order.
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
FETCH_HINT = "dmn-train --fetch-weights"


class PretrainedWeightsError(ValueError):
    """Backbone weights that cannot be found or used; the message says what was tried and the fix
    (a ``ValueError``, so every CLI prints it as one line and exits 2)."""


@dataclass(frozen=True)
class BackboneWeights:
    """Where a backbone's starting weights came from (``backbone_weights`` in a checkpoint)."""

    requested: str  # the --pretrained value as given (auto, a tag, hf-hub:<id>, a path)
    name: str  # timm tag ("dpn92.mx_in1k"), "hf-hub:<id>", or the file's absolute path
    hub_id: str | None  # the Hugging Face repo the file came from; None for a local file
    file: str  # the local file (in the Hugging Face cache for hub weights)
    sha256: str  # of that file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        source = f"{self.hub_id} ({Path(self.file).name})" if self.hub_id else self.file
        return f"{self.name} from {source}, sha256 {self.sha256[:12]}…"


def resolve_weights(backbone: str, requested: str = AUTO, *,
                    fetch_hint: str = FETCH_HINT) -> BackboneWeights | None:
    """The weights file ``requested`` names for ``backbone``; None means random init.

    Hub weights come from the Hugging Face cache (``HF_HOME``), downloaded into it first unless
    ``HF_HUB_OFFLINE=1``. ``fetch_hint`` is the command the error message suggests for fetching
    them ahead of time.

    Raises:
        PretrainedWeightsError: unknown tag, weights for another architecture, a missing file,
            or hub weights neither cached nor downloadable (one line with the fixes).
    """
    requested = str(requested).strip()
    if requested.lower() == NONE:
        return None
    if backbone == TINY_CNN:
        if requested.lower() == AUTO:
            return None
        raise PretrainedWeightsError(f"--pretrained {requested}: {TINY_CNN!r} has no pretrained "
                                     "weights (it always starts from random weights); drop "
                                     "--pretrained or pick a timm --backend")
    if requested.startswith(HF_PREFIX):
        hub_id = requested[len(HF_PREFIX):]
        return _from_hub(requested, requested, hub_id, fetch_hint)
    if _looks_like_file(requested):
        path = Path(requested).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(
                f"--pretrained {requested}: no such file; pass an existing timm weights file "
                f"(.safetensors/.pth), a timm tag, {AUTO} or {NONE}")
        path = path.resolve()
        return BackboneWeights(requested, str(path), None, str(path), _sha256(path))
    tag = _timm_tag(backbone, requested)
    import timm

    cfg = timm.models.get_pretrained_cfg(tag, allow_unregistered=False)
    if cfg is None or not cfg.hf_hub_id:
        where = f" (only at {cfg.url})" if cfg is not None and cfg.url else ""
        raise PretrainedWeightsError(
            f"--pretrained {requested}: timm has no Hugging Face Hub weights for {tag}{where}; "
            f"download a weights file and pass --pretrained FILE, or --pretrained {NONE}")
    return _from_hub(requested, tag, cfg.hf_hub_id, fetch_hint)


def load_backbone_weights(backbone: nn.Module, config: DMNConfig, weights: BackboneWeights
                          ) -> None:
    """Load ``weights`` into ``backbone`` (``create_backbone(config)``, e.g. a DMN's
    ``.backbone``) through timm's own loading path, strictly.

    Raises:
        PretrainedWeightsError: the file does not fit the backbone, or its tag normalises
            images differently from the backbone the model was built with.
    """
    kwargs: dict[str, Any] = {"pretrained": True}
    name = config.backbone
    if weights.hub_id is None:
        kwargs["pretrained_cfg_overlay"] = dict(file=weights.file)
    elif weights.name.startswith(HF_PREFIX):
        kwargs["pretrained_cfg_overlay"] = dict(hf_hub_id=weights.hub_id)
    else:
        name = weights.name  # a tag: timm resolves it to its hub repo and the cached file
    missing = _MissingKeys()
    try:
        # fork_rng: building the throwaway model must not move the run's random stream, so a
        # run's head initialisation is the same whatever its backbone weights
        with missing.listening(), torch.random.fork_rng(devices=[]):
            loaded = timm_features(name, config.backbone_final_norm, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PretrainedWeightsError(f"backbone weights {weights.name} do not fit "
                                     f"{config.backbone!r} ({first}); pass weights for that "
                                     f"architecture, or --pretrained {NONE}") from None
    # features_only loads are non-strict in timm (the classifier is dropped): a file of another
    # architecture would leave the backbone silently random. Missing keys that are ours count.
    ours = set(loaded.state_dict())
    lacking = [k for k in missing.keys if k in ours or k.replace(".", "_", 1) in ours]
    if lacking:
        raise PretrainedWeightsError(
            f"backbone weights {weights.name} do not fit {config.backbone!r}: they lack "
            f"{len(lacking)} of its {len(ours)} tensors (e.g. {lacking[0]}); pass weights for "
            f"that architecture, or --pretrained {NONE}")
    if normalization(loaded) != normalization(backbone):
        raise PretrainedWeightsError(
            f"--pretrained {weights.requested}: {weights.name} expects other input "
            f"normalisation than {config.backbone!r}; name the tag as the backbone instead "
            f"(--backend {weights.name})")
    own = backbone.state_dict()
    state = loaded.state_dict()
    if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
        raise PretrainedWeightsError(f"backbone weights {weights.name} do not fit "
                                     f"{config.backbone!r}; pass weights for that architecture")
    backbone.load_state_dict(state)


class _MissingKeys(logging.Handler):
    """Collects the keys timm's ``load_pretrained`` reports missing (it logs them at INFO)."""

    _PATTERN = re.compile(r"Missing keys \((.*)\) discovered")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self._PATTERN.match(record.getMessage())
        if match:
            self.keys += match.group(1).split(", ")

    @contextlib.contextmanager
    def listening(self):
        logger = logging.getLogger("timm.models._builder")
        level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)


def _from_hub(requested: str, name: str, hub_id: str, fetch_hint: str) -> BackboneWeights:
    """Find ``hub_id``'s weights file as timm does (safetensors first), downloading it into the
    cache unless offline."""
    from huggingface_hub import constants, hf_hub_download

    repo, _, revision = hub_id.partition("@")
    last = ""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would break the one-line error
    try:
        for filename in HF_FILES:
            try:
                path = Path(hf_hub_download(repo, filename, revision=revision or None))
            except Exception as err:  # offline, no such repo/file, no network: try the next one
                last = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                continue
            return BackboneWeights(requested, name, hub_id, str(path), _sha256(path))
    finally:
        hub_logger.setLevel(level)
    why = ("not in the cache, and HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE
           else f"not in the cache, and the Hub did not give them: {last}")
    raise PretrainedWeightsError(
        f"backbone weights {name} not available: tried Hugging Face repo {hub_id} "
        f"({' / '.join(HF_FILES)}) in the cache {constants.HF_HUB_CACHE} - {why}; fetch them "
        f"first where there is network (`{fetch_hint}`, same HF_HOME), or pass --pretrained "
        f"FILE (a timm weights file), or --pretrained {NONE} for random init")


def _timm_tag(backbone: str, requested: str) -> str:
    """``auto`` → the backbone's own tag (timm's default when it names none); a tag must be of
    the backbone's architecture."""
    import timm

    arch, _ = timm.models.split_model_name_tag(backbone)
    if requested.lower() == AUTO or requested == arch:
        cfg = timm.models.get_pretrained_cfg(backbone, allow_unregistered=False)
        if cfg is None:
            raise PretrainedWeightsError(
                f"--pretrained {AUTO}: timm knows no pretrained weights for {backbone!r}; pass "
                f"--pretrained FILE or --pretrained {NONE}")
        return f"{arch}.{cfg.tag}" if cfg.tag else arch
    if timm.models.split_model_name_tag(requested)[0] != arch:
        raise PretrainedWeightsError(
            f"--pretrained {requested}: not a timm tag of {arch!r} (e.g. "
            f"{', '.join(timm.list_pretrained(arch + '.*')[:3]) or arch}); pass one, "
            f"hf-hub:<repo>, a weights file, {AUTO} or {NONE}")
    if requested not in timm.list_pretrained(arch + ".*"):
        raise PretrainedWeightsError(
            f"--pretrained {requested}: timm has no such tag; {arch} has "
            f"{', '.join(timm.list_pretrained(arch + '.*')) or 'none'}")
    return requested


def _looks_like_file(value: str) -> bool:
    return (os.sep in value or value.startswith(".") or value.endswith(_FILE_SUFFIXES)
            or Path(value).expanduser().is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["AUTO", "NONE", "BackboneWeights", "PretrainedWeightsError", "load_backbone_weights",
           "resolve_weights"]
