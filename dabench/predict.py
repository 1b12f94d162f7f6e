"""Apply a finished run to a folder of images, so users can look at what it learned.

    from dabench.predict import predict
    written = predict("runs/streets-sim_to_streets-real/adaptsegnet/seed0-1a2b3c4d", "my_images/", "preds/")

Segmentation runs write, per image, ``<stem>.png`` (the prediction in the Cityscapes palette, at
the image's own resolution) and ``<stem>_overlay.png`` (half image, half prediction).
Classification runs write ``predictions.csv`` (file, class, probability). The model is the run's
last checkpoint (the one ``--resume`` would continue from).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dabench.algorithm import upsample
from dabench.data import to_unit_range
from dabench.errors import DabenchError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _input_size(config: dict) -> tuple[int, int]:
    """(W, H) the target images were fed at during the run."""
    w, h = (int(v) for v in str(config.get("eval_size", "")).split("x"))
    return w, h


def load_run(run_dir: str | Path, device: str = "auto"):
    """The trained algorithm of a run folder (its last checkpoint), in eval mode, and its config."""
    from dabench.runner import build_algorithm, resolve_device

    run_dir = Path(run_dir).expanduser()
    config_path, ckpt = run_dir / "config.json", run_dir / "checkpoint.pt"
    if not config_path.is_file() or not ckpt.is_file():
        raise DabenchError(
            f"{run_dir} is not a run folder with a checkpoint: expected {config_path} and {ckpt}, as `dabench run` "
            "writes them (the folder is printed at the end of a run)."
        )
    config = json.loads(config_path.read_text())
    dev = resolve_device(device)
    size = _input_size(config)
    image_size = size if config["task"] == "segmentation" else size[0]
    algo = build_algorithm(config, image_size, dev)
    state = torch.load(ckpt, map_location=dev, weights_only=False)
    algo.load_state_dict(state["model"])
    algo.eval()
    return algo, config, dev


def _read(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except OSError as exc:
        raise DabenchError(f"{path} is not a readable image ({exc}).") from None


def _tensor(img: Image.Image, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img.resize(size, Image.BICUBIC), dtype=np.float32)).permute(2, 0, 1)
    return to_unit_range(x).unsqueeze(0).to(device)


@torch.no_grad()
def predict(run_dir: str | Path, images: str | Path, out: str | Path, device: str = "auto") -> list[Path]:
    """Predict every image in ``images`` with the run's model; returns the files written."""
    from dabench.segmentation import colorize

    images, out = Path(images).expanduser(), Path(out).expanduser()
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else []
    if not files:
        raise DabenchError(f"--images {images}: no image files ({', '.join(IMAGE_SUFFIXES)}) in that folder.")
    algo, config, dev = load_run(run_dir, device)
    size, classes = _input_size(config), config["classes"]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = []
    for path in files:
        img = _read(path)
        logits = algo.predict(_tensor(img, size, dev)).float()
        if config["task"] == "segmentation":
            logits = upsample(logits, (img.height, img.width))
            colour = colorize(logits.argmax(1)[0].cpu().numpy().astype(np.uint8), classes)
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
