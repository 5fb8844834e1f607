#!/usr/bin/env python3
"""Reads a project's COCO export back with pycocotools (pip install pycocotools) and checks it
against the project state, pixel for pixel: every exported mask decodes to the mask the
project holds (what the workbench shows), with the same area and box.

    tools/coco_readback.py PHOTOS_DIR COCO.json

Run by hand (not in CI: it needs pycocotools); docs/annotation.md has the last run."""
import json
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as cocomask
from pycocotools.coco import COCO

folder, coco_path = Path(sys.argv[1]), sys.argv[2]
state = json.loads((folder / "instructdiffusion-project.json").read_text())
items = {i["file"]: i for i in state["items"]}
coco = COCO(coco_path)
checked = 0
for ann in coco.loadAnns(coco.getAnnIds()):
    seg = ann.get("segmentation")
    if not isinstance(seg, dict):
        continue
    img = coco.loadImgs(ann["image_id"])[0]
    h, w = img["height"], img["width"]
    exported = coco.annToMask(ann).astype(bool)
    answer = items[img["file_name"]]["answer"]
    held = [
        cocomask.decode({"size": [h, w], "counts": i["rle"].encode()}).astype(bool)
        for i in answer["instances"]
    ]
    match = [k for k, m in enumerate(held) if m.shape == exported.shape and (m == exported).all()]
    assert match, f"{img['file_name']}: no held mask equals annotation {ann['id']}"
    rle = cocomask.encode(np.asfortranarray(exported.astype(np.uint8)))
    assert int(cocomask.area(rle)) == int(ann["area"]), (ann["id"], cocomask.area(rle), ann["area"])
    assert np.allclose(cocomask.toBbox(rle), ann["bbox"]), (ann["id"], cocomask.toBbox(rle), ann["bbox"])
    checked += 1
print(f"{checked} masks read back by pycocotools equal the project's, area and box included")
