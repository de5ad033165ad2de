"""Export the positive interactions of a log as a COCO instance-segmentation dataset.

    python -m data.coco_export LOG OUT [--overwrite]

LOG: an interaction log (.zarr), a run directory (interactions.zarr and/or shards/worker_NNN.zarr) or a
shards/ directory; a sharded run is read as one log (data/shards.py `RunLog`: records numbered by start
time, committed records only).

Writes, for every committed record i with label POSITIVE and a non-empty mask:
- `OUT/images/{i:06d}.png`: rgb_before (8-bit RGB PNG),
- `OUT/depth/{i:06d}.png`: depth_before as 16-bit PNG in millimetres (0 = missing),
- one annotation in `OUT/annotations.json` (COCO "instances" format): the extracted mask as
  compressed RLE (pycocotools.mask.encode), its bbox [x, y, w, h] and area in pixels, category
  1 'object', iscrowd 0.
Image ids equal the log record index (for a sharded run the run's global index; each image entry then
also names its `worker_id` and `shard_record`, the record's index in its shard, and `info.shards` lists
the shards); each image entry also carries `depth_file_name`.
Positives whose mask is empty are skipped (counted in the returned summary).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data.schema import Label, depth_to_mm
from data.shards import RunLog


def export_positives(
    log_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Any]:
    """Export positives of the log or run at `log_path` to `out_dir`; return a summary dict.

    Raises FileExistsError if `out_dir/annotations.json` exists and `overwrite` is False.
    """
    out = Path(out_dir)
    ann_path = out / "annotations.json"
    if ann_path.exists() and not overwrite:
        raise FileExistsError(f"{ann_path} exists; pass overwrite=True (--overwrite) to replace it")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "depth").mkdir(parents=True, exist_ok=True)

    with RunLog.open(log_path) as log:  # read-only; numbers the records committed now
        n = len(log)
        labels = log.read_field("label", slice(0, n))
        positives = np.flatnonzero(labels == int(Label.POSITIVE))
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        skipped_empty = 0
        for i in positives.tolist():
            f = log.read_fields(("rgb_before", "depth_before", "mask", "primitive", "model_version"), i)
            mask = np.asarray(f["mask"], dtype=bool)
            if not mask.any():
                skipped_empty += 1
                continue
            name = f"{i:06d}.png"
            if not cv2.imwrite(str(out / "images" / name), cv2.cvtColor(f["rgb_before"], cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {out / 'images' / name}")
            if not cv2.imwrite(str(out / "depth" / name), depth_to_mm(f["depth_before"])):
                raise OSError(f"could not write {out / 'depth' / name}")
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(x) for x in mask_utils.toBbox(rle)]
            area = float(mask_utils.area(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            image = {
                "id": i,
                "file_name": f"images/{name}",
                "depth_file_name": f"depth/{name}",
                "height": log.height,
                "width": log.width,
            }
            if log.sharded:
                k, local = log.locate(i)
                image.update(worker_id=log.shards[k].worker_id, shard_record=local)
            images.append(image)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                    "primitive": f["primitive"],
                    "model_version": int(f["model_version"]),
                }
            )
        coco = {
            "info": {
                "description": "positive interactions exported from an interaction log",
                "source_log": str(Path(log_path).resolve()),
                "schema_version": log.schema_version,
                "code_version": log.code_version,
                "committed_records": n,
                **({"shards": [{"path": str(sh.path), "worker_id": sh.worker_id, "robot_kind": sh.robot_kind,
                                "records": sh.count} for sh in log.shards]} if log.sharded else {}),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
        }
    tmp = ann_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(ann_path)
    return {
        "records": n,
        "positives": len(positives),
        "annotations": len(annotations),
        "skipped_empty": skipped_empty,
        "annotations_path": str(ann_path),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Export positive interactions of a log as COCO instances.")
    ap.add_argument("log", type=Path, help="the interaction log (interactions.zarr), or a run directory "
                    "(interactions.zarr and/or shards/)")
    ap.add_argument("out", type=Path, help="output directory")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing annotations.json")
    args = ap.parse_args(argv)
    summary = export_positives(args.log, args.out, overwrite=args.overwrite)
    print(
        f"exported {summary['annotations']} annotations from {summary['positives']} positives "
        f"({summary['records']} records, {summary['skipped_empty']} empty masks skipped) -> "
        f"{summary['annotations_path']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
