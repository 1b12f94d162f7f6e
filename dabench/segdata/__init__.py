"""Segmentation data on disk: ``pairs`` (image/label file pairs, label-id lookup tables, the
resize that moves a mask with its image) and ``prepared`` (copies resized to the training size
that runs read instead of the originals)."""
