"""The features' picture: t-SNE of source and target features, at the start and at the selected step.

The DANN paper's argument as a figure (Ganin et al., JMLR 2016, figure 4): before adaptation the
source and target features form separate clouds; after it they mix, while the classes stay apart.

    from dabench.embed import embed
    written = embed("runs/mnist5k_to_mnistm5k/dann/seed0-1a2b3c4d")   # [.../embed/tsne.png]

``dabench embed RUN_DIR`` writes ``embed/tsne.png`` into the run folder (``dabench report`` shows
it): four panels, the network as built (step 0) and at the selected step, coloured by domain and
by class. The images are the ones ``dabench divergence`` measures (source validation, target
test), so the picture and the proxy A-distance describe the same points. The class colours read
the target test labels: a picture for a person, never an input to selection or a table.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dabench.divergence import _features, measured, pick
from dabench.errors import DabenchError
from dabench.runfolder import EMBED
from dabench.tasks import task_of


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, D) -> (N, 2): scikit-learn's t-SNE on standardised features (PCA start, perplexity 30
    or less for a few points)."""
    from sklearn.manifold import TSNE

    x = (features - features.mean(0)) / (features.std(0) + 1e-8)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def _labels(dataset, n: int, seed: int) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in pick(dataset, n, seed)])


def embed(run_dir: str | Path, *, selection: str | None = None, images: int = 500,
          data_root: str | Path | None = None, device: str = "auto") -> list[Path]:
    """t-SNE of ``images`` source-val and target-test images per domain, written to
    ``RUN_DIR/embed/tsne.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = measured(run_dir, selection=selection, images=images, data_root=data_root, device=device, what="embed")
    trained, seed = m.trained, m.trained.config["seed"]
    if trained.run_dir is None:
        raise DabenchError(f"{run_dir} is a saved model, not a run folder: embed writes into the run folder.")
    classes = list(trained.config.get("classes") or [])
    by_class = not task_of(trained.config["task"]).per_pixel
    ys = np.r_[_labels(m.src_set, m.n, seed), _labels(m.tgt_set, m.n, seed + 1)] if by_class else None
    domain = np.r_[np.zeros(m.n), np.ones(m.n)]
    panels = []
    for title, algorithm, step in (("as built", m.start, 0), (f"selected ({trained.selection})", trained.algorithm,
                                                                trained.step)):
        fs = _features(algorithm, m.src_set, m.n, trained.device, seed)
        ft = _features(algorithm, m.tgt_set, m.n, trained.device, seed + 1)
        panels.append((f"{title}, step {step}", tsne(np.concatenate([fs, ft]), seed)))
    cols = 2 if by_class else 1
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 9.6), squeeze=False)
    for row, (title, xy) in enumerate(panels):
        ax = axes[row][0]
        for d, (name, colour) in enumerate(((f"source ({m.src_name})", "#1f77b4"), (f"target ({m.tgt_name})", "#d62728"))):
            ax.scatter(*xy[domain == d].T, s=4, c=colour, label=name, alpha=0.6, linewidths=0)
        ax.set_title(f"{title}: by domain", fontsize=10)
        ax.legend(loc="best", fontsize=8, markerscale=3)
        if by_class:
            ax = axes[row][1]
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            for c in np.unique(ys):
                for d, marker in ((0, "o"), (1, "^")):
                    keep = (ys == c) & (domain == d)
                    ax.scatter(*xy[keep].T, s=5, marker=marker, color=cmap(int(c) % cmap.N), alpha=0.6, linewidths=0,
                               label=(classes[c] if c < len(classes) else str(c)) if d == 0 else None)
            ax.set_title(f"{title}: by class (o source, ^ target)", fontsize=10)
            ax.legend(loc="best", fontsize=7, markerscale=3, ncol=2)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {m.n} images per domain: {trained.config['algo']}, {trained.config['src']} -> "
                 f"{trained.config['tgt']}, seed {seed}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    folder = trained.run_dir / EMBED
    folder.mkdir(exist_ok=True)
    target = folder / "tsne.png"
    partial = folder / "tsne.png.partial"
    partial.write_bytes(buffer.getvalue())
    partial.replace(target)  # never half a picture
    return [target]
