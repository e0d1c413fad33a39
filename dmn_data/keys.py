"""Names of the shard format (``dmn-shards/1``), kept in one place. See docs/shards.md."""

FORMAT = "dmn-shards/1"
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

#: member extensions of one sample: the image (one of these) and the annotation JSON
IMAGE_EXTS = ("jpg", "png")
META_EXT = "json"


def shard_name(dataset: str, split: str, index: int) -> str:
    """``<dataset>-<split>-000000.tar``; ``+`` in a dataset name becomes ``plus`` (shell-safe)."""
    return f"{dataset.replace('+', 'plus')}-{split}-{index:06d}.tar"
