"""Hugging Face Space: the lddetr web demo (web_demo/app.py) for the model in the Space variable LDDETR_MODEL.

The Space holds this file beside the package folders (modeling_lddetr/, processing/, hub_datasets/, web_demo/),
which the upload commands of the repository's README ("Web demo") put there; videos in examples/ become the app's
examples.
"""

import os
from pathlib import Path

from web_demo.app import build_demo, launch, load_pipeline

if not os.environ.get("LDDETR_MODEL"):
    raise SystemExit("set the Space variable LDDETR_MODEL to an LD-DETR model trained on CLIP features (a Hub id)")
examples = sorted(str(path) for path in (Path(__file__).parent / "examples").glob("*.mp4"))
demo = build_demo(load_pipeline(os.environ["LDDETR_MODEL"]), examples=examples)

if __name__ == "__main__":
    launch(demo)
