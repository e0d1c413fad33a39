"""Benchmark ``dmn-data build`` against the original DMN preprocessing, on a generated RefCOCO.

    .venv/bin/python pipelines/bench_build.py [--images 2000] [--out /tmp/bench_build] [--quick]

Stages: generate a RefCOCO-like tree in the real REFER layout under ``<out>/data`` (cached, not
timed) → time, in fresh subprocesses and round-robin so load drift hits every pipeline alike,
``dmn_data.build.build`` with 1 and 2 workers and a re-implementation of DMN's ``process_coco``
→ measure bytes on disk of our shards, the original DMN layout and CRIS-style per-ref records →
print a markdown table and write it (with command, date, machine, targets) to ``--md``. When a
target is missed, cProfile one 1-worker build and add the per-stage breakdown.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pickle
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as cocomask

REPO = Path(__file__).resolve().parents[1]
GEN_VERSION = 2
SPLITS = ("train", "val", "testA", "testB")
SPLIT_P = (0.85, 0.075, 0.0375, 0.0375)  # RefCOCO (unc): 16994 / 1500 / 750 / 750 images
IMAGE_SIZES = ((640, 480), (640, 480), (640, 480), (640, 427), (480, 640), (640, 424), (612, 612))
WORDS = ("man woman person guy lady kid boy girl dog cat horse car bus truck bike chair couch table "
         "bed cup bowl bottle plate pizza cake umbrella bag left right middle center front back top "
         "bottom far near closest big small tall short red blue green white black yellow brown gray "
         "striped wearing holding sitting standing with on in the a of to by next behind under shirt "
         "jacket hat glasses half partially visible second third from corner edge other one two").split()
IM_SUBDIR = "images/mscoco/images/train2014"
NOTES_MARKER = "<!-- end of generated results; hand-written notes below this line are kept on rerun -->"


# ---------------------------------------------------------------------------------------------
# Fake RefCOCO in the REFER layout
# ---------------------------------------------------------------------------------------------

def _photo_jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    """A photo-like JPEG (q=90): smooth colour field + blurred blobs + mid-frequency texture +
    mild sensor noise. Pure noise would compress to ~4x the size of a real photo."""
    img = Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x, y, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 160), rng.uniform(20, 120)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.5))))
    tex = Image.fromarray((rng.normal(0, 30, (h // 4, w // 4)) + 128).clip(0, 255).astype(np.uint8))
    tex = np.asarray(tex.resize((w, h), Image.BILINEAR), np.float32) - 128
    pix = np.asarray(img, np.float32) + tex[..., None] * rng.uniform(0.3, 0.8) + rng.normal(0, 3.0, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(pix.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _polygon_parts(rng: np.random.Generator, w: int, h: int) -> list[list[float]]:
    """1–3 star-shaped polygon parts (COCO ``[x0, y0, x1, y1, ...]``, 2 decimals) of one object."""
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    size = rng.uniform(0.05, 0.3) * min(w, h)
    parts = []
    for _ in range(int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))):
        px, py = cx + rng.normal(0, size / 2), cy + rng.normal(0, size / 2)
        k = int(rng.integers(8, 40))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = size * rng.uniform(0.4, 1.0, k)
        xs = np.clip(px + rad * np.cos(ang), 0, w - 1)
        ys = np.clip(py + rad * np.sin(ang), 0, h - 1)
        parts.append([round(float(v), 2) for v in np.stack([xs, ys], 1).ravel()])
    return parts


def _sentence(rng: np.random.Generator, sent_id: int) -> dict:
    tokens = [str(t) for t in rng.choice(WORDS, int(rng.integers(2, 9)))]
    raw = " ".join(tokens)
    raw = raw[0].upper() + raw[1:] if rng.random() < 0.3 else raw
    return {"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": " ".join(tokens)}


def generate_refcoco(root: Path, n_images: int, seed: int = 0) -> dict:
    """Write ``<root>/refcoco/{refs(unc).p, instances.json}`` and the JPEGs; cached by the spec in
    ``<root>/generated.json`` (written last). ~2.5 refs (1–4) and ~7 sentences per image, plus
    unreferred annotations as in COCO. Returns the spec with dataset statistics."""
    spec = {"version": GEN_VERSION, "images": n_images, "seed": seed}
    marker = root / "generated.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in spec} == spec:
            return done
    shutil.rmtree(root, ignore_errors=True)
    im_dir = root / IM_SUBDIR
    im_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    image_ids = sorted(int(i) for i in rng.choice(np.arange(1, 581930), n_images, replace=False))
    images, anns, refs = [], [], []
    ann_id, ref_id, sent_id = 100000, 0, 0
    for image_id in image_ids:
        w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        (im_dir / file_name).write_bytes(_photo_jpeg(rng, w, h))
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        split = str(rng.choice(SPLITS, p=SPLIT_P))
        n_refs = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.35, 0.15]))
        for j in range(n_refs + int(rng.integers(2, 7))):  # the rest are objects nobody refers to
            ann_id += 1
            while True:  # a polygon squashed flat against the border has no pixel: draw again
                seg = _polygon_parts(rng, w, h)
                rle = cocomask.merge(cocomask.frPyObjects(seg, h, w))
                if cocomask.area(rle) >= 64:
                    break
            cat = int(rng.integers(1, 91))
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
                         "area": float(cocomask.area(rle)), "bbox": [float(v) for v in cocomask.toBbox(rle)],
                         "iscrowd": 0})
            if j >= n_refs:
                continue
            sents = []
            for _ in range(int(rng.choice([2, 3, 4], p=[0.35, 0.5, 0.15]))):
                sents.append(_sentence(rng, sent_id))
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat,
                         "split": split, "sent_ids": [s["sent_id"] for s in sents],
                         "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "sentences": sents})
            ref_id += 1
    folder = root / "refcoco"
    folder.mkdir()
    with open(folder / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    instances = {"info": {"description": "generated by pipelines/bench_build.py"}, "images": images,
                 "annotations": anns, "categories": [{"id": i, "name": f"cat{i}"} for i in range(1, 91)]}
    (folder / "instances.json").write_text(json.dumps(instances))
    sizes = [p.stat().st_size for p in im_dir.iterdir()]
    spec.update(refs=len(refs), sentences=sent_id, annotations=len(anns), image_bytes=sum(sizes),
                image_kb_min=min(sizes) / 1e3, image_kb_median=statistics.median(sizes) / 1e3,
                image_kb_max=max(sizes) / 1e3,
                split_images={s: len({r["image_id"] for r in refs if r["split"] == s}) for s in SPLITS})
    marker.write_text(json.dumps(spec, indent=1))
    return spec


# ---------------------------------------------------------------------------------------------
# The pipelines under test
# ---------------------------------------------------------------------------------------------

def original_dmn(data_root: Path, dest: Path) -> dict:
    """DMN's ``ReferDataset.process_coco`` (query-objseg), re-implemented: per ref sorted by
    ``file_name``, a full image decode for (h, w) — ``cv2.imread`` there; cv2 is not installed
    here, so PIL ``np.asarray(Image.open(p).convert('RGB'))`` — then polygon → RLE → ``np.max``
    over parts → float32 tensor → one ``<ann_id>.pth`` per ref, and one ``unc_<split>.pth`` list of
    ``(image, mask file, sentence)`` per split. REFER's loading is reduced to the two file reads
    plus the ann index (its other indexes are not built: in the original's favour)."""
    import torch

    refs = pickle.loads((data_root / "refcoco" / "refs(unc).p").read_bytes())
    instances = json.loads((data_root / "refcoco" / "instances.json").read_bytes())
    anns = {a["id"]: a for a in instances["annotations"]}
    im_dir = data_root / IM_SUBDIR
    mask_dir = dest / "mask"
    mask_dir.mkdir(parents=True, exist_ok=True)
    sentences = 0
    for split in SPLITS:
        split_dataset = []
        for ref in sorted((r for r in refs if r["split"] == split), key=lambda r: r["file_name"]):
            img_filename = f"COCO_train2014_{ref['image_id']:012d}.jpg"
            if not os.path.exists(im_dir / img_filename):
                continue
            h, w, _ = np.asarray(Image.open(im_dir / img_filename).convert("RGB")).shape
            rle = cocomask.frPyObjects(anns[ref["ann_id"]]["segmentation"], h, w)
            mask = torch.from_numpy(np.max(cocomask.decode(rle), axis=2).astype(np.float32))
            mask_file = f"{ref['ann_id']}.pth"
            if not os.path.exists(mask_dir / mask_file):
                torch.save(mask, mask_dir / mask_file)
            for sentence in ref["sentences"]:
                split_dataset.append((img_filename, mask_file, sentence["sent"]))
        sentences += len(split_dataset)
        torch.save(split_dataset, dest / f"unc_{split}.pth")
    return {"sentences": sentences}


def ours(data_root: Path, dest: Path, workers: int, shard_size: int = 500) -> dict:
    from dmn_data.build import BuildConfig, build

    manifest = build(BuildConfig(dataset="unc", out=dest, data_root=data_root, workers=workers, shard_size=shard_size),
                     progress=False)
    return {"sentences": manifest["totals"]["sentences"], "images": manifest["totals"]["images"],
            "shards": {s: [sh["images"] for sh in v["shards"]] for s, v in manifest["splits"].items()}}


def cris_records(data_root: Path, dest: Path) -> None:
    """CRIS-style storage: one record per ref embedding the JPEG bytes, its mask as PNG (0/255)
    and its sentences; written as one tar per split (no lmdb here)."""
    refs = pickle.loads((data_root / "refcoco" / "refs(unc).p").read_bytes())
    instances = json.loads((data_root / "refcoco" / "instances.json").read_bytes())
    anns = {a["id"]: a for a in instances["annotations"]}
    imgs = {i["id"]: i for i in instances["images"]}
    dest.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with tarfile.open(dest / f"{split}.tar", "w") as tar:
            for ref in sorted((r for r in refs if r["split"] == split), key=lambda r: r["ref_id"]):
                info = imgs[ref["image_id"]]
                h, w = info["height"], info["width"]
                mask = cocomask.decode(cocomask.merge(cocomask.frPyObjects(anns[ref["ann_id"]]["segmentation"], h, w)))
                png = io.BytesIO()
                Image.fromarray(mask * 255).save(png, "PNG")
                meta = {"img_name": info["file_name"], "ref_id": ref["ref_id"], "cat": ref["category_id"],
                        "sents": [s["sent"] for s in ref["sentences"]]}
                members = {"jpg": (data_root / IM_SUBDIR / info["file_name"]).read_bytes(),
                           "png": png.getvalue(), "json": json.dumps(meta).encode()}
                for ext, payload in members.items():
                    ti = tarfile.TarInfo(f"{ref['ref_id']}.{ext}")
                    ti.size = len(payload)
                    tar.addfile(ti, io.BytesIO(payload))


def tree_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``path``."""
    files = [p.stat() for p in Path(path).rglob("*") if p.is_file()]
    return sum(s.st_size for s in files), sum(s.st_blocks * 512 for s in files)


def _cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children) CPU seconds, user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run_trial(kind: str, data_root: Path, dest: Path, workers: int, shard_size: int,
              profile_to: Path | None = None) -> dict:
    """One timed run in this process (the caller runs it in a fresh interpreter)."""
    if kind == "original":
        import torch  # noqa: F401  (imported before the clock starts, as in the original script)
    else:
        import dmn_data.build  # noqa: F401
    shutil.rmtree(dest, ignore_errors=True)
    prof = cProfile.Profile() if profile_to else None
    load = os.getloadavg()[0]
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    if prof:
        prof.enable()
    out = original_dmn(data_root, dest) if kind == "original" else ours(data_root, dest, workers, shard_size)
    if prof:
        prof.disable()
        prof.dump_stats(profile_to)
    wall, cpu1 = time.perf_counter() - t0, _cpu_seconds()
    cpu_self, cpu_children = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    return {"kind": kind, "workers": workers, "shard_size": shard_size, "wall_s": wall, "cpu_s": cpu_self + cpu_children,
            "cpu_parent_s": cpu_self, "cpu_workers_s": cpu_children, "load1": load, **out}


def _subprocess_trial(kind: str, data_root: Path, dest: Path, workers: int, shard_size: int,
                      profile_to: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--_trial", kind, "--_data", str(data_root), "--_dest", str(dest),
           "--_workers", str(workers), "--_shard_size", str(shard_size)]
    if profile_to:
        cmd += ["--_profile", str(profile_to)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"trial {kind} (workers={workers}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------

#: stage name → (file suffix, function name) whose cumulative time is the stage's
STAGES = (
    ("read_refer (pickle + instances.json + records)", "dmn_data/refer.py", "read_refer"),
    ("  └ json.loads (instances.json; + shard markers at the end)", "json/__init__.py", "loads"),
    ("  └ load_plain_pickle refs(unc).p", "dmn_data/pickles.py", "load_plain_pickle"),
    ("vocabulary", "dmn_data/build.py", "_vocab"),
    ("write_shard (all shards)", "dmn_data/writer.py", "write_shard"),
    ("  └ _image_bytes (read + 1/8 draft decode)", "dmn_data/writer.py", "_image_bytes"),
    ("      └ PIL load (draft decode)", "PIL/ImageFile.py", "load"),
    ("      └ Path.read_bytes", "pathlib.py", "read_bytes"),
    ("  └ _sample_meta (masks + ids)", "dmn_data/writer.py", "_sample_meta"),
    ("      └ segmentation_to_rle", "dmn_data/masks.py", "segmentation_to_rle"),
    ("  └ json.dumps (sample meta; + markers)", "json/__init__.py", "dumps"),
    ("  └ tar _add", "dmn_data/writer.py", "_add"),
    ("  └ os.fsync", "~", "<built-in method posix.fsync>"),
    ("manifest", "dmn_data/build.py", "_manifest"),
)


def stage_breakdown(profile_path: Path) -> tuple[float, list[tuple[str, float]]]:
    st = pstats.Stats(str(profile_path))
    total = st.total_tt
    rows = []
    for label, suffix, func in STAGES:
        ct = sum(v[3] for (f, _, fn), v in st.stats.items() if fn == func and f.replace("\\", "/").endswith(suffix))
        rows.append((label, ct))
    return total, rows


def top_functions(profile_path: Path, n: int = 15) -> str:
    buf = io.StringIO()
    pstats.Stats(str(profile_path), stream=buf).sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
    return "\n".join(ln.replace(str(REPO) + "/", "") for ln in lines[start:] if ln.strip())


def lpt_speedup(shards: dict[str, list[int]], workers: int) -> float:
    """Best speedup of a build whose splits run one after another, each split's shards spread over
    ``workers`` (longest first), if time were proportional to images."""
    makespan = 0
    for sizes in shards.values():
        loads = [0] * workers
        for s in sorted(sizes, reverse=True):
            loads[loads.index(min(loads))] += s
        makespan += max(loads)
    return sum(map(sum, shards.values())) / makespan


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return (f"{platform.machine()} {model}, {os.cpu_count()} cores (shared with other users: timings are noisy), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}, no GPU")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "n/a"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def report(res: dict) -> tuple[str, str]:
    """(results table for stdout, full markdown document)."""
    n = res["dataset"]["images"]
    rates = {k: [n / t["wall_s"] for t in v] for k, v in res["trials"].items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(t["cpu_s"] for t in v) for k, v in res["trials"].items()}
    labels = {"ours1": "ours, `build` workers=1", "ours2": "ours, `build` workers=2",
              "original": "original DMN `process_coco` (re-impl.)",
              "ours2_small": "diagnostic: ours, workers=2, `--shard-size` {}"}
    t = ["| pipeline | images/s (median) | runs: images/s | runs: wall s | CPU s (median, incl. children) | vs original |",
         "|---|---:|---|---|---:|---:|"]
    for k in res["trials"]:
        runs = ", ".join(f"{r:.1f}" for r in rates[k])
        walls = ", ".join(f"{x['wall_s']:.2f}" for x in res["trials"][k])
        t.append(f"| {labels[k].format(res['trials'][k][0]['shard_size'])} | **{med[k]:.1f}** | {runs} | {walls} | {cpu[k]:.2f} | {med[k] / med['original']:.2f}× |")
    src = res["bytes"]["source_images"][0]
    b = ["| layout | bytes | size | × source images |", "|---|---:|---:|---:|"]
    names = {"source_images": "source images alone", "ours_shards": "ours: shards + manifest + vocab (all splits)",
             "original_layout": "original DMN: images + float32 `.pth` mask per ref + split index",
             "original_masks_and_index": "  └ of which masks + index", "cris_records": "CRIS-style per-ref records (JPEG + PNG mask + JSON, tar)"}
    for k, label in names.items():
        v = res["bytes"][k][0]
        b.append(f"| {label} | {v:,} | {_fmt_bytes(v)} | {v / src:.3f}× |")
    speed_vs_orig = med["ours1"] / med["original"]
    scaling = med["ours2"] / med["ours1"]
    ours_b, orig_b = res["bytes"]["ours_shards"][0], res["bytes"]["original_layout"][0]
    targets = [("ours (workers=1) ≥ 5× original images/s", f"{speed_vs_orig:.2f}×", speed_vs_orig >= 5),
               ("workers=2 ≥ 1.7× workers=1", f"{scaling:.2f}×", scaling >= 1.7),
               ("shards ≤ 1.1× source images", f"{ours_b / src:.3f}×", ours_b <= 1.1 * src),
               ("shards ≤ 1/10 original DMN layout", f"{ours_b / orig_b:.4f} (1/{orig_b / ours_b:.1f})", ours_b * 10 <= orig_b)]
    tg = ["| target | measured | met |", "|---|---:|:---:|"] + [f"| {a} | {m} | {'yes' if ok else '**NO**'} |" for a, m, ok in targets]
    res["targets"] = {a: ok for a, _, ok in targets}
    table = "\n".join(t) + "\n\n" + "\n".join(b) + "\n\n" + "\n".join(tg)

    model = []
    for k in (k for k in ("ours2", "ours2_small") if k in res["trials"]):
        tr = res["trials"][k]
        parent = statistics.median(x["cpu_parent_s"] for x in tr)
        pool = statistics.median(x["cpu_workers_s"] for x in tr)
        wall = parent + pool / lpt_speedup(tr[0]["shards"], 2)
        model.append(f"| {labels[k].format(tr[0]['shard_size'])} | {cpu['ours1']:.2f} | {parent:.2f} | {pool:.2f} | "
                     f"{wall:.2f} | {cpu['ours1'] / wall:.2f}× |")
    d = res["dataset"]
    loads = [x["load1"] for v in res["trials"].values() for x in v]
    doc = [f"# Benchmark: `dmn-data build` vs the original DMN preprocessing\n",
           f"- Date: {res['date']}",
           f"- Machine: {res['machine']}",
           f"- Command: `{res['command']}`",
           f"- Dataset (generated, REFER layout, `unc` split_by): {d['images']:,} images "
           f"(train/val/testA/testB {'/'.join(str(d['split_images'][s]) for s in SPLITS)}), {d['refs']:,} refs, "
           f"{d['sentences']:,} sentences, {d['annotations']:,} annotations; JPEG q=90, 640×480-ish, "
           f"{d['image_kb_min']:.0f}/{d['image_kb_median']:.0f}/{d['image_kb_max']:.0f} KB min/median/max",
           f"- Each pipeline ran {res['repeats']}× in a fresh interpreter (imports before the clock), round-robin; "
           f"images/s = images / wall time of one run, the median is reported. 1-min load average at the start "
           f"of the runs: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores. Source files are in the page cache "
           f"(just generated / read by the previous run) for every pipeline.",
           f"- The original decodes each image with PIL (`np.asarray(Image.open(p).convert('RGB'))`) where DMN "
           f"calls `cv2.imread`: OpenCV is not installed here.",
           "", "## Throughput", "", "\n".join(t), "",
           f"Both pipelines produced the same number of sentences ({res['trials']['ours1'][0]['sentences']:,}). "
           f"Ours writes one shard per 500 images per split (default `--shard-size`): "
           + ", ".join(f"{s} {v}" for s, v in res["shards"].items())
           + f"; with splits built one after another the best possible 2-worker speedup of this layout is "
           f"{lpt_speedup(res['shards'], 2):.2f}× (time ∝ images, no serial part)"
           + (f"; with `--shard-size {res['trials']['ours2_small'][0]['shard_size']}` it is "
              f"{lpt_speedup(res['trials']['ours2_small'][0]['shards'], 2):.2f}×." if "ours2_small" in res["trials"] else "."),
           "", "### Without contention (CPU-time model)", "",
           "Wall time here depends on what the other users run: the kernel's autogroup scheduler "
           "(`/proc/sys/kernel/sched_autogroup_enabled` = "
           f"{_read('/proc/sys/kernel/sched_autogroup_enabled')}) shares the cores between sessions, not processes, "
           "so a second worker process gets no extra CPU while other sessions are busy. CPU seconds depend on that "
           "much less (they still vary by ~±15% between runs here: shared caches). With workers=2 the parent does the serial work (read the REFER files, vocabulary, send the tasks, "
           "manifest) and the pool does the shards; on 2 idle cores the wall time would be about "
           "parent CPU + pool CPU / (best 2-worker speedup of the shard layout):", "",
           "| run | CPU s, 1 worker | parent CPU s (serial) | pool CPU s | modelled wall s on 2 idle cores | modelled speedup vs 1 worker |",
           "|---|---:|---:|---:|---:|---:|"] + model + [
           "", "## Bytes on disk (apparent size; allocated size in results.json)", "", "\n".join(b), "",
           "## Targets", "", "\n".join(tg), ""]
    if res.get("profile"):
        p = res["profile"]
        doc += ["## Profile of one workers=1 build (cProfile, cumulative time per stage)", "",
                f"Profiled wall {p['wall_s']:.2f} s (cProfile overhead included); stages by cumulative time:", "",
                "| stage | s | % of profiled total |", "|---|---:|---:|"]
        doc += [f"| {label} | {s:.2f} | {100 * s / p['total_s']:.1f} |" for label, s in p["stages"]]
        doc += ["", "Top functions by own time:", "", "```", p["top"], "```", ""]
    return table, "\n".join(doc) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_build"))
    ap.add_argument("--quick", action="store_true", help="~20 images, 1 run each, results under --out only")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per pipeline (default 3; 1 with --quick)")
    ap.add_argument("--md", type=Path, default=None, help="markdown report (default docs/benchmarks/build.md; <out>/BENCHMARKS_build.md with --quick)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    ap.add_argument("--diagnose-shard-size", type=int, default=0, metavar="N",
                    help="also time workers=2 with --shard-size N (a diagnostic row, not a target)")
    for hidden in ("--_trial", "--_data", "--_dest", "--_workers", "--_shard_size", "--_profile"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._trial:
        out = run_trial(args._trial, Path(args._data), Path(args._dest), int(args._workers), int(args._shard_size),
                        Path(args._profile) if args._profile else None)
        print(json.dumps(out))
        return 0

    n_images = 20 if args.quick and args.images == 2000 else args.images
    repeats = args.repeats or (1 if args.quick else 3)
    md = args.md or (args.out / "BENCHMARKS_build.md" if args.quick else REPO / "docs" / "benchmarks" / "build.md")
    out = args.out.resolve()
    data = out / "data"
    t0 = time.perf_counter()
    spec = generate_refcoco(data, n_images)
    print(f"dataset ready in {time.perf_counter() - t0:.1f} s: {spec['images']} images, {spec['refs']} refs, "
          f"{spec['sentences']} sentences ({data})", flush=True)

    plan = [("ours1", "ours", 1, 500), ("ours2", "ours", 2, 500), ("original", "original", 1, 0)]
    if args.diagnose_shard_size:
        plan.append(("ours2_small", "ours", 2, args.diagnose_shard_size))
    trials: dict[str, list[dict]] = {k: [] for k, *_ in plan}
    sizes: dict[str, tuple[int, int]] = {}
    for r in range(repeats):
        for key, kind, workers, shard_size in plan[r % len(plan):] + plan[: r % len(plan)]:
            dest = out / "runs" / key
            res = _subprocess_trial(kind, data, dest, workers, shard_size)
            trials[key].append(res)
            print(f"run {r + 1}/{repeats} {key:>8}: {res['wall_s']:7.2f} s  {spec['images'] / res['wall_s']:8.1f} images/s "
                  f"(load {res['load1']:.1f})", flush=True)
            if kind == "original":
                sizes["original_masks_and_index"] = tree_bytes(dest)
                shutil.rmtree(dest)  # ~1.2 MB per ref
            elif key == "ours1":
                sizes["ours_shards"] = tree_bytes(dest)
    counts = {t["sentences"] for v in trials.values() for t in v}
    if counts != {spec["sentences"]}:
        raise RuntimeError(f"pipelines disagree on the number of sentences: {counts} vs {spec['sentences']} generated")

    src = tree_bytes(data / IM_SUBDIR)
    cris = out / "runs" / "cris"
    shutil.rmtree(cris, ignore_errors=True)
    cris_records(data, cris)
    sizes.update(source_images=src, cris_records=tree_bytes(cris),
                 original_layout=tuple(a + b for a, b in zip(src, sizes["original_masks_and_index"])))
    shutil.rmtree(cris)

    command = " ".join([".venv/bin/python", "pipelines/bench_build.py", *(argv if argv is not None else sys.argv[1:])])
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
           "command": command, "repeats": repeats, "dataset": spec, "trials": trials,
           "bytes": sizes, "shards": trials["ours1"][0]["shards"]}
    table, doc = report(res)
    if args.profile == "always" or (args.profile == "auto" and not all(res["targets"].values())):
        prof_path = out / "ours1.prof"
        pt = _subprocess_trial("ours", data, out / "runs" / "profile", 1, 500, profile_to=prof_path)
        total, stages = stage_breakdown(prof_path)
        res["profile"] = {"wall_s": pt["wall_s"], "total_s": total, "stages": stages, "top": top_functions(prof_path)}
        table, doc = report(res)
    shutil.rmtree(out / "runs", ignore_errors=True)

    print(table)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    notes = ""
    if md.is_file() and NOTES_MARKER in md.read_text():
        notes = md.read_text().split(NOTES_MARKER, 1)[1]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(doc + "\n" + NOTES_MARKER + notes)
    print(f"\nwrote {md} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
