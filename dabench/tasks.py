"""What differs between tasks, as data: classification and segmentation each fill in one ``Task``.

The engine reads a run's task from here instead of branching on its name: the metric tables and
selection read, how images are sized when domains are loaded, how large the evaluation batches and
validation splits are, how often a run evaluates. A third task (object detection is the next one
sim-to-real users ask for) is one more entry here plus its plugins. Torch-free, so the results
layer can read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from dabench.errors import DabenchError

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
CLASS_ACC = "class_acc"  # per-class accuracy in a classification record (the fraction of each class's images right)
IGNORE_INDEX = 255  # the label of pixels no class covers (Cityscapes' void), ignored by losses and metrics


@dataclass(frozen=True)
class Task:
    name: str
    metric: str  # the primary metric: source-val selection and the tables read it
    per_class: str | None  # a per-class score the records hold and the tables show by class ("iou"), or None
    default_backbone: str  # the backbone a run takes without --backbone
    eval_batch: int  # images per evaluation forward
    val_cap: int | None  # source val and target val hold at most this many images (None: no cap)
    labelfree_images: int  # images the label-free scores read at each evaluation
    eval_every_least: int  # the default evaluation interval (and its least, with evaluations_per_stage)
    evaluations_per_stage: int | None  # None: every eval_every_least steps; else about this many per stage
    # One square size shared by every domain of a run (the source's; --image-size sets it), as a
    # classifier's fixed input needs. False: each domain keeps its own (width, height), scaled to
    # the height --image-size gives (GTA5 1280x720, Cityscapes 1024x512).
    one_size: bool
    several_sources: bool  # one minibatch can hold images of several source domains
    balanced_budget: bool  # a labelled target budget (--tgt-labeled N) is drawn class-balanced
    domain_classifier: bool  # DEV's domain classifier on feature vectors applies
    ignore_index: int | None  # a label value that marks "no class" (pixels), or None
    resample: str  # how images are resized on their way into the network ("bilinear", "bicubic"; antialiased)
    per_pixel: bool  # predictions are maps (``dabench predict`` writes a colour map per image), else a class

    def eval_every(self, steps: int) -> int:
        """The default evaluation interval of a stage of ``steps`` steps."""
        if self.evaluations_per_stage is None:
            return self.eval_every_least
        return max(self.eval_every_least, steps // self.evaluations_per_stage)

    def load_size(self, image_size: int | None, source_size: int | tuple[int, int] | None = None):
        """The size argument a domain is loaded with: the run's --image-size, or for a ``one_size``
        task once the source is loaded, the source's size (every other domain is resized to it)."""
        if self.one_size and source_size is not None:
            return source_size if isinstance(source_size, int) else source_size[0]
        return image_size

    def network_size(self, size: tuple[int, int]):
        """What a backbone is built for from the (width, height) a run fed: the side of a
        ``one_size`` task's square images, else (width, height)."""
        return size[0] if self.one_size else tuple(size)

    def summary(self, correct: float, per_class: list[float]) -> dict:
        """An evaluation record's entry from pixel/image accuracy and the per-class scores (NaN:
        absent): per-class IoU (``per_class``), or for a task without one, per-class accuracy
        (``class_acc``, the report's heatmap; the tables read ``metric`` alone)."""
        if self.per_class is None:
            return {self.metric: correct, CLASS_ACC: [None if v != v else v for v in per_class]}
        present = [v for v in per_class if v == v]
        return {self.metric: sum(present) / len(present) if present else float("nan"), "pixacc": correct,
                self.per_class: [None if v != v else v for v in per_class]}


TASKS = {
    CLASSIFICATION: Task(CLASSIFICATION, metric="acc", per_class=None, default_backbone="digit-cnn", eval_batch=256,
                         val_cap=None, labelfree_images=1000, eval_every_least=200, evaluations_per_stage=None,
                         one_size=True, several_sources=True, balanced_budget=True, domain_classifier=True,
                         ignore_index=None, resample="bilinear", per_pixel=False),
    # Segmentation evaluates its val splits at full size at every evaluation: 20% of GTA5 would be
    # 4,993 frames, five times the training compute of a run at --eval-every 200; 500 is the size
    # of Cityscapes val, the papers' test split (runner.eval_every_for has the FLOP count).
    # Full-resolution label maps are large: two images per evaluation forward.
    SEGMENTATION: Task(SEGMENTATION, metric="miou", per_class="iou", default_backbone="deeplabv2", eval_batch=2,
                       val_cap=500, labelfree_images=50, eval_every_least=200, evaluations_per_stage=10,
                       one_size=False, several_sources=False, balanced_budget=False, domain_classifier=False,
                       ignore_index=IGNORE_INDEX, resample="bicubic", per_pixel=True),
}


def task_of(name: str) -> Task:
    """The ``Task`` called ``name`` (a run config's ``task``, a Domain's, a plugin's)."""
    try:
        return TASKS[name]
    except KeyError:
        raise DabenchError(f"Unknown task '{name}': dabench knows {', '.join(TASKS)}.") from None
