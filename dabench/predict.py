"""Apply a finished run to a folder of images, so users can look at what it learned.

    from dabench.predict import predict
    written = predict("runs/streets-sim_to_streets-real/adaptsegnet/seed0-1a2b3c4d", "my_images/", "preds/")

Segmentation runs write, per image, ``<stem>.png`` (the prediction in the Cityscapes palette, at
the image's own resolution) and ``<stem>_overlay.png`` (half image, half prediction).
Without an output folder they go to the run folder's ``predictions/``, where ``dabench report``
finds them. Classification runs write ``predictions.csv`` (file, class, probability). The model is the step
source-val selection chose, the tables' model (``selection="last"``: the final step).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dabench.data import image_tensor
from dabench.errors import DabenchError
from dabench.files import writable_folder
from dabench.layers import upsample
from dabench.runfolder import PREDICTIONS
from dabench.tasks import task_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _read(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except OSError as exc:
        raise DabenchError(f"{path} is not a readable image ({exc}).") from None


def colorize(label: np.ndarray, classes: list[str], colours: dict | None = None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours: each class's colour as its data set recorded it
    (``Domain.colours``: Cityscapes' for the street scenes), a fixed spread of colours otherwise;
    ignored pixels black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(classes):
        table[i] = (colours or {}).get(name, ((i * 67) % 256, (i * 149) % 256, (i * 211) % 256))
    return table[label]


@torch.no_grad()
def predict(run_dir: str | Path, images: str | Path, out: str | Path | None = None, device: str = "auto",
            selection: str | None = None, overwrite: bool = False) -> list[Path]:
    """Predict every image in ``images`` with the run's model (the step ``selection`` chose:
    source-val by default, as the tables); returns the files written. ``out`` defaults to the run
    folder's ``predictions/`` (``dabench report`` shows its overlays). Files already in ``out``
    are kept unless ``overwrite``."""
    from dabench.api import load

    images = Path(images).expanduser()
    out = Path(run_dir).expanduser() / PREDICTIONS if out is None else Path(out).expanduser()
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else []
    if not files:
        raise DabenchError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in that folder.")
    run = load(run_dir, selection=selection, device=device)
    algo, config, dev = run.algorithm, run.config, run.device
    size, classes = run.input_size, config["classes"]
    writable_folder(out, "--out")
    per_pixel = task_of(config["task"]).per_pixel
    names = ([n for f in files for n in (f"{f.stem}.png", f"{f.stem}_overlay.png")] if per_pixel else
             ["predictions.csv"])
    there = [n for n in names if (out / n).exists()]
    if there and not overwrite:
        raise DabenchError(f"--out {out} already holds {there[0]}{f' and {len(there) - 1} more' if len(there) > 1 else ''}"
                           " from an earlier prediction. Choose another --out, or add --overwrite to replace them.")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for path in files:
        img = _read(path)
        logits = algo.predict(image_tensor(path, size, config["task"])[None].to(dev)).float()
        if per_pixel:
            logits = upsample(logits, (img.height, img.width))
            colour = colorize(logits.argmax(1)[0].cpu().numpy().astype(np.uint8), classes, config.get("colours"))
            overlay = (0.5 * np.asarray(img, dtype=np.float32) + 0.5 * colour).round().astype(np.uint8)
            for name, arr in ((f"{path.stem}.png", colour), (f"{path.stem}_overlay.png", overlay)):
                Image.fromarray(arr).save(out / name)
                written.append(out / name)
        else:
            prob = logits.softmax(1)[0]
            k = int(prob.argmax())
            rows.append({"file": path.name, "class": classes[k], "probability": round(float(prob[k]), 4)})
    if rows:
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["file", "class", "probability"])
            writer.writeheader()
            writer.writerows(rows)
        written.append(out / "predictions.csv")
    return written
