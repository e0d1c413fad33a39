"""Where the raw files of each dataset can be downloaded: one table, read by ``dmn-data download``.

Every archive lists its known locations in the order they are tried (``--mirror`` comes before all
of them), its size in bytes, and a checksum only where one was found in a public source; each entry
says where its facts come from. docs/datasets.md explains which locations are official and which
are mirrors, and what cannot be automated.
"""

from __future__ import annotations

from dataclasses import dataclass

_WAYBACK = "https://web.archive.org/web"
_UNC = "bvisionweb1.cs.unc.edu/licheng/referit/data"

#: Shown with every failure: a file fetched by other means is picked up from the downloads folder.
PLACE_BY_HAND = "put a copy at {archive} and run the same command again (it is checked, then extracted)"


@dataclass(frozen=True)
class Archive:
    name: str  # file name; also what --mirror appends to its base URL
    urls: tuple[str, ...]  # known locations, tried in this order
    size: int | None  # bytes; None where no public source states it
    known_hash: str | None  # "sha256:<hex>" (pooch's format); None where none was published
    member: str  # the folder inside the archive ...
    target: str  # ... and where it goes under --data-root (the REFER layout, README "Real datasets")
    manual: str  # what to do by hand when every location fails


def _wayback(snapshot: str, url: str) -> tuple[str, str]:
    """An Internet Archive snapshot of ``url``: the raw bytes (``id_``) first, then the plain form."""
    return f"{_WAYBACK}/{snapshot}id_/{url}", f"{_WAYBACK}/{snapshot}/{url}"


def _unc_zip(folder: str, snapshot: str, size: int | None, known_hash: str | None) -> Archive:
    """One of UNC's REFER zips (``<folder>.zip`` holding ``<folder>/``): the Internet Archive
    snapshot first (both forms), then the dead official host in case it comes back."""
    url = f"https://{_UNC}/{folder}.zip"
    return Archive(name=f"{folder}.zip", urls=(*_wayback(snapshot, url), url), size=size,
                   known_hash=known_hash, member=folder, target=folder,
                   manual="the Internet Archive is the only public copy known to work")


ARCHIVES: dict[str, Archive] = {
    # UNC's REFER annotations. Official location: lichengunc/refer README (first tlberg.cs.unc.edu, later
    # bvisionweb1.cs.unc.edu); down since 2022-09 (refer#14, #23, #26; CRIS.pytorch#10).
    # Wayback snapshots: refer#14, refer#26, CRIS.pytorch#10 cite the plain form; the "id_" form (the
    # raw bytes of the same snapshot) is used by TarunTomar122/attention-is-all-you-need-for-vlms
    # docs/gpu-runbook.md. Size and SHA-256: that repository's docs/datasets.md (@bc183da), which
    # checksum-verified the snapshots. Holds refcoco/{instances.json, refs(unc).p, refs(google).p}.
    "refcoco.zip": _unc_zip(
        "refcoco", "20220413011718", size=53_993_993,
        known_hash="sha256:7f924bb7ed8dc4568058e4ff626281918d56e5206f4c868c5a80f088f38c8bf0"),
    # Same provenance as refcoco.zip. Holds refcoco+/{instances.json, refs(unc).p}.
    "refcoco+.zip": _unc_zip(
        "refcoco+", "20220413011656", size=45_613_210,
        known_hash="sha256:5f1238112d63199e68da54a28f201471909b21ded7ed79a57d51b4c1443c6b45"),
    # Same provenance as refcoco.zip. Holds refcocog/{instances.json, refs(google).p, refs(umd).p}:
    # both gref (google split) and gref-umd come from it.
    "refcocog.zip": _unc_zip(
        "refcocog", "20220413012904", size=56_712_951,
        known_hash="sha256:3d1f7e5b2ff2205940bf59de55f861f5f2cc1403fb980669933a7f9af1aa8211"),
    # RefCLEF (ReferIt in the REFER layout). Snapshot: refer#26, CRIS.pytorch#10 (plain form).
    # No public size or checksum found: neither is checked. Holds refclef/{instances.json,
    # refs(berkeley).p, refs(unc).p}.
    "refclef.zip": _unc_zip("refclef", "20220413011817", size=None, known_hash=None),
    # UNC's subset (19,997 images) of SAIAPR TC-12 used by RefCLEF (lichengunc/refer README).
    # Snapshot: refer#15 and mbzuai-oryx/groundingLMM#9 (plain form, "20220515000000" = nearest
    # capture); refer#15 notes nobody has confirmed it matches the original. No public size or
    # checksum found. Its inner layout (a top-level saiapr_tc-12/ folder) is not confirmed either:
    # an archive without that folder is taken to hold the folder's contents.
    "saiapr_tc-12.zip": Archive(
        name="saiapr_tc-12.zip",
        urls=(*_wayback("20220515000000", f"http://{_UNC}/images/saiapr_tc-12.zip"), f"https://{_UNC}/images/saiapr_tc-12.zip"),
        size=None, known_hash=None,
        member="saiapr_tc-12", target="images/saiapr_tc-12",
        manual=("the full SAIAPR TC-12 release (https://www-i6.informatik.rwth-aachen.de/imageclef/resources/saiaprtc12/, "
                "groundingLMM#9) is packaged differently and is not handled automatically"),
    ),
    # COCO 2014 train images, shared by unc, unc+, gref and gref-umd. Official: cocodataset.org.
    # Size and SHA-256: tensorflow/datasets tensorflow_datasets/url_checksums/coco.txt
    # (@333639b); the MD5 0da8c0bd3d6becc4dcb32757491aca88 in attention-is-all-you-need-for-vlms
    # docs/gpu-runbook.md is the same file. pjreddie.com (darknet's author) has served a copy since
    # 2016 (seen in several repositories' setup notes); the checksum decides whether it matches.
    "train2014.zip": Archive(
        name="train2014.zip",
        urls=("http://images.cocodataset.org/zips/train2014.zip",
              "https://pjreddie.com/media/files/train2014.zip"),
        size=13_510_573_713,
        known_hash="sha256:ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
        member="train2014", target="images/mscoco/images/train2014",
        manual="see https://cocodataset.org/#download (COCO's terms of use apply)",
    ),
}

#: The archives each ``--dataset`` needs, in download order (small annotation files first).
DATASET_ARCHIVES: dict[str, tuple[str, ...]] = {
    "unc": ("refcoco.zip", "train2014.zip"),
    "unc+": ("refcoco+.zip", "train2014.zip"),
    "gref": ("refcocog.zip", "train2014.zip"),
    "gref-umd": ("refcocog.zip", "train2014.zip"),
    "referit": ("refclef.zip", "saiapr_tc-12.zip"),
}
