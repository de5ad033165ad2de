"""On-disk format of exported (held-out) scenes, shared by the simulator exporter and the evaluator.

Layout of a scenes directory ``DIR/`` (``{id}`` is a zero-padded string such as ``000000``)::

    rgb/{id}.png          8-bit RGB (stored as a normal colour PNG)
    depth/{id}.png        uint16 millimetres along the camera z axis, 0 = missing
    label/{id}.png        uint16 instance ids, 0 = background and table
    camera/{id}.json      {"fx", "fy", "cx", "cy", "width", "height",
                           "pose": 4x4 nested list, world(robot base)-from-camera, OpenCV axes}
    instances_coco.json   COCO "instances" JSON over all scenes (see `write_coco`)
    meta.json             free-form dict (split, seed, generator, ...)

In memory depth is float32 metres (0 = missing) and K a 3x3 pinhole matrix, as in `robot.base`.
Writing rounds depth to whole millimetres and clips it to 65535 mm; non-finite or negative depths
are stored as missing (0). Real captured frames can be stored the same way; their label PNG may be
omitted (`Scene.label = None`), in which case `read_scene(..., require_label=False)` returns
``label=None``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "Scene",
    "write_scene",
    "write_coco",
    "write_meta",
    "read_meta",
    "read_scene",
    "list_scenes",
    "iter_scenes",
    "COCO_FILE",
    "META_FILE",
]

COCO_FILE = "instances_coco.json"
META_FILE = "meta.json"
COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


@dataclass
class Scene:
    """One exported RGB-D frame with instance ground truth.

    rgb: (H, W, 3) uint8 RGB. depth: (H, W) float32 metres, 0 = missing.
    label: (H, W) uint16 instance ids, 0 = background/table (None if unlabelled).
    K: (3, 3) intrinsics in pixels. camera_pose: (4, 4) world-from-camera.
    """

    id: str
    rgb: np.ndarray
    depth: np.ndarray
    label: np.ndarray | None
    K: np.ndarray
    camera_pose: np.ndarray

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


# ----------------------------------------------------------------------------------------- helpers


def _paths(root: Path, scene_id: str) -> dict[str, Path]:
    return {
        "rgb": root / "rgb" / f"{scene_id}.png",
        "depth": root / "depth" / f"{scene_id}.png",
        "label": root / "label" / f"{scene_id}.png",
        "camera": root / "camera" / f"{scene_id}.json",
    }


def _check_id(scene_id: str) -> str:
    if not isinstance(scene_id, str) or not scene_id or "/" in scene_id or "\\" in scene_id:
        raise ValueError(f"scene id must be a non-empty string without path separators, got {scene_id!r}")
    return scene_id


def depth_m_to_mm(depth: np.ndarray) -> np.ndarray:
    """float metres -> uint16 millimetres (rounded, clipped to 65535, non-finite/negative -> 0)."""
    d = np.asarray(depth, dtype=np.float64)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    return np.clip(np.rint(d * 1000.0), 0, 65535).astype(np.uint16)


def depth_mm_to_m(depth_mm: np.ndarray) -> np.ndarray:
    return np.asarray(depth_mm, dtype=np.float32) / np.float32(1000.0)


def _validate_scene(scene: Scene) -> None:
    _check_id(scene.id)
    rgb = np.asarray(scene.rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"scene {scene.id}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    depth = np.asarray(scene.depth)
    if depth.shape != (h, w):
        raise ValueError(f"scene {scene.id}: depth shape {depth.shape} != rgb size {(h, w)}")
    if scene.label is not None:
        label = np.asarray(scene.label)
        if label.shape != (h, w):
            raise ValueError(f"scene {scene.id}: label shape {label.shape} != rgb size {(h, w)}")
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"scene {scene.id}: label must be an integer array, got {label.dtype}")
        if label.size and (label.min() < 0 or label.max() > 65535):
            raise ValueError(f"scene {scene.id}: label ids must lie in [0, 65535]")
    if np.asarray(scene.K).shape != (3, 3):
        raise ValueError(f"scene {scene.id}: K must be 3x3, got {np.asarray(scene.K).shape}")
    if np.asarray(scene.camera_pose).shape != (4, 4):
        raise ValueError(
            f"scene {scene.id}: camera_pose must be 4x4, got {np.asarray(scene.camera_pose).shape}"
        )


def _imwrite(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write image {path}")


def _imread(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"missing {what} file: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"corrupt or unreadable {what} image: {path}")
    return img


def _label_to_annotations(label: np.ndarray, image_id: int, first_ann_id: int) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    anns = []
    ids = np.unique(label)
    ids = ids[ids != 0]
    for k, inst in enumerate(ids):
        m = np.asfortranarray((label == inst).astype(np.uint8))
        rle = mask_utils.encode(m)
        bbox = [float(x) for x in mask_utils.toBbox(rle)]
        area = float(mask_utils.area(rle))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": COCO_CATEGORY["id"],
                "segmentation": rle,
                "bbox": bbox,
                "area": area,
                "iscrowd": 0,
                "instance_id": int(inst),
            }
        )
    return anns


# ------------------------------------------------------------------------------------------ writing


def write_scene(root: str | Path, scene: Scene) -> None:
    """Write one scene's rgb/depth/label PNGs and camera JSON under ``root``."""
    _validate_scene(scene)
    root = Path(root)
    p = _paths(root, scene.id)
    _imwrite(p["rgb"], cv2.cvtColor(np.ascontiguousarray(scene.rgb), cv2.COLOR_RGB2BGR))
    _imwrite(p["depth"], depth_m_to_mm(scene.depth))
    if scene.label is not None:
        _imwrite(p["label"], np.asarray(scene.label).astype(np.uint16))
    K = np.asarray(scene.K, dtype=np.float64)
    cam = {
        "fx": float(K[0, 0]),
        "fy": float(K[1, 1]),
        "cx": float(K[0, 2]),
        "cy": float(K[1, 2]),
        "width": scene.width,
        "height": scene.height,
        "pose": np.asarray(scene.camera_pose, dtype=np.float64).tolist(),
    }
    p["camera"].parent.mkdir(parents=True, exist_ok=True)
    p["camera"].write_text(json.dumps(cam, indent=1))


def write_coco(root: str | Path, scene_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Build ``instances_coco.json`` from the label PNGs of ``scene_ids`` (default: all scenes).

    Images get consecutive integer ids starting at 1 (and carry ``scene_id``); each nonzero label id
    becomes one annotation (category 1 "object", compressed RLE, bbox [x, y, w, h], area, iscrowd 0,
    plus ``instance_id``). Returns the written dict.
    """
    root = Path(root)
    ids = list_scenes(root) if scene_ids is None else [_check_id(s) for s in scene_ids]
    images, annotations = [], []
    for image_id, sid in enumerate(ids, start=1):
        p = _paths(root, sid)
        label = _imread(p["label"], "label")
        if label.ndim != 2:
            raise ValueError(f"label image must be single-channel: {p['label']}")
        h, w = label.shape
        images.append(
            {
                "id": image_id,
                "file_name": f"rgb/{sid}.png",
                "width": int(w),
                "height": int(h),
                "scene_id": sid,
            }
        )
        annotations += _label_to_annotations(label, image_id, len(annotations) + 1)
    coco = {
        "info": {"description": "interactive-seg exported scenes"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(COCO_CATEGORY)],
    }
    (root / COCO_FILE).write_text(json.dumps(coco))
    return coco


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------ reading


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"missing meta file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt meta file {path}: {e}") from None


def _read_camera(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing camera file: {path}")
    try:
        cam = json.loads(path.read_text())
        K = np.array(
            [[float(cam["fx"]), 0.0, float(cam["cx"])], [0.0, float(cam["fy"]), float(cam["cy"])], [0, 0, 1]],
            dtype=np.float64,
        )
        pose = np.asarray(cam["pose"], dtype=np.float64)
        width, height = int(cam["width"]), int(cam["height"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"corrupt camera file {path}: {e!r}") from None
    if pose.shape != (4, 4):
        raise ValueError(f"corrupt camera file {path}: pose must be 4x4, got {pose.shape}")
    return {"K": K, "pose": pose, "width": width, "height": height}


def read_scene(root: str | Path, scene_id: str, require_label: bool = True) -> Scene:
    """Read one scene. Raises FileNotFoundError / ValueError naming the offending file."""
    root = Path(root)
    p = _paths(root, _check_id(scene_id))
    cam = _read_camera(p["camera"])
    h, w = cam["height"], cam["width"]

    bgr = _imread(p["rgb"], "rgb")
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    if bgr.dtype != np.uint8:
        raise ValueError(f"rgb image must be 8-bit, got {bgr.dtype}: {p['rgb']}")
    if bgr.shape[:2] != (h, w):
        raise ValueError(f"rgb size {bgr.shape[:2]} != camera size {(h, w)}: {p['rgb']}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    dmm = _imread(p["depth"], "depth")
    if dmm.ndim != 2 or dmm.dtype != np.uint16:
        raise ValueError(
            f"depth image must be single-channel uint16, got {dmm.shape} {dmm.dtype}: {p['depth']}"
        )
    if dmm.shape != (h, w):
        raise ValueError(f"depth size {dmm.shape} != camera size {(h, w)}: {p['depth']}")

    label = None
    if p["label"].is_file() or require_label:
        lab = _imread(p["label"], "label")
        if lab.ndim != 2 or lab.dtype not in (np.uint16, np.uint8):
            raise ValueError(
                f"label image must be single-channel uint16, got {lab.shape} {lab.dtype}: {p['label']}"
            )
        if lab.shape != (h, w):
            raise ValueError(f"label size {lab.shape} != camera size {(h, w)}: {p['label']}")
        label = lab.astype(np.uint16)

    return Scene(
        id=scene_id, rgb=rgb, depth=depth_mm_to_m(dmm), label=label, K=cam["K"], camera_pose=cam["pose"]
    )


def list_scenes(root: str | Path) -> list[str]:
    """Sorted scene ids (stems of ``rgb/*.png``). Raises FileNotFoundError if ``root/rgb`` is absent."""
    rgb_dir = Path(root) / "rgb"
    if not rgb_dir.is_dir():
        raise FileNotFoundError(f"not a scenes directory (missing {rgb_dir})")
    return sorted(p.stem for p in rgb_dir.glob("*.png"))


def iter_scenes(root: str | Path, limit: int | None = None, require_label: bool = True) -> Iterator[Scene]:
    ids = list_scenes(root)
    if limit is not None:
        ids = ids[:limit]
    for sid in ids:
        yield read_scene(root, sid, require_label=require_label)
