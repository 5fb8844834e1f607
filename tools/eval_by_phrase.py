#!/usr/bin/env python3
"""Referring-segmentation scores grouped by the kind of phrase that names the object.

Reads the samples.jsonl that `instructdiffusion eval --samples-out DIR` writes and prints, for
each kind of phrase, how many samples and their mean IoU:

  kind      "the heart"                  the only object of its kind
  colour    "the pink heart"             colour and kind
  position  "the leftmost star", "the diamond on the left"
  size      "the largest circle"
  person    "the person", "the person on the right"

Usage: tools/eval_by_phrase.py DIR/samples.jsonl   (Python 3 standard library only)
"""
import collections
import json
import re
import sys

POSITION = re.compile(r"leftmost|rightmost|topmost|lowest|on the left|on the right")


def kind_of(phrase):
    if "person" in phrase:
        return "person"
    if POSITION.search(phrase):
        return "position"
    if re.search(r"largest|smallest", phrase):
        return "size"
    return "colour" if len(phrase.split()) == 3 else "kind"


def main(path):
    groups = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if d["task"] == "referring_segmentation" and d.get("phrase"):
                groups[kind_of(d["phrase"])].append(d["value"])
    if not groups:
        sys.exit(f"{path}: no referring segmentation samples")
    print(f"{'phrase':<10} {'samples':>7} {'mean IoU':>9}")
    for k in ["kind", "colour", "position", "size", "person"]:
        v = groups.get(k)
        if v:
            print(f"{k:<10} {len(v):>7} {sum(v) / len(v):>9.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
