"""Deep Embedded Validation (You, Wang, Long & Jordan, "Towards Accurate Model Selection in Deep
Unsupervised Domain Adaptation", ICML 2019), transcribed from the authors' code.

Repository thuml/Deep-Embedded-Validation, commit abf9c96c6bf653d919073f7fbe7f3213c56731b9, file
``dev.py``: ``get_dev_risk`` (lines 6-19) and ``get_weight`` (lines 22-58).

What the authors do, and this module does the same way:
- the density ratio w(x) = p_t(x) / p_s(x) comes from a domain classifier trained on the
  features of the source *training* set (label 1) and of the target set (label 0), concatenated
  in that order; the classifier then weighs the source *validation* features, rows it never saw;
- the training rows are split once at random, 80% to fit and 20% held out
  (``train_test_split(train_size=0.8)``, not stratified);
- the classifier is sklearn's ``MLPClassifier(hidden_layer_sizes=(d, d, 2), activation="relu",
  alpha=decay)`` (d: the feature width; every other setting sklearn's default: Adam, 200
  epochs), fitted once for each decay in 1e-1, 3e-2, ..., 1e-5; the decay whose classifier is
  most accurate on the held-out 20% is kept (the first of equals);
- w = p(target | x) / p(source | x) * N_s / N_t, with N_s and N_t the numbers of source-train and
  target rows (``predict_proba``'s columns are the classes in order: 0 target, 1 source);
- the risk is mean(w l) + eta mean(w) - eta with eta = -Cov(w l, w) / Var(w), both with ddof=1
  (the paper's control variate, eq. 9).

Left out: the ``print`` calls. The authors pass no random state, so sklearn draws from numpy's
global generator (the split first, then each classifier's initialisation and batch order in
turn); a caller seeds it with ``np.random.seed`` to repeat a result.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

DECAYS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]


def get_dev_risk(weight: np.ndarray, error: np.ndarray) -> float:
    """``weight`` and ``error`` of shape (N, 1): the source-val samples' importance weights and losses."""
    n, d = weight.shape
    assert (n, d) == error.shape, "dimension mismatch"
    weighted_error = weight * error
    cov = np.cov(np.concatenate((weighted_error, weight), axis=1), rowvar=False)[0][1]
    var_w = np.var(weight, ddof=1)
    eta = -cov / var_w
    return float(np.mean(weighted_error) + eta * np.mean(weight) - eta)


def get_weight(source_feature: np.ndarray, target_feature: np.ndarray, validation_feature: np.ndarray) -> np.ndarray:
    """(N_v, 1) density ratios of the validation rows, from source-train and target features."""
    n_s, d = source_feature.shape
    n_t, _ = target_feature.shape
    all_feature = np.concatenate((source_feature.copy(), target_feature.copy()))
    all_label = np.asarray([1] * n_s + [0] * n_t, dtype=np.int32)
    fit_x, held_x, fit_y, held_y = train_test_split(all_feature, all_label, train_size=0.8)
    val_acc, classifiers = [], []
    for decay in DECAYS:
        classifier = MLPClassifier(hidden_layer_sizes=(d, d, 2), activation="relu", alpha=decay)
        classifier.fit(fit_x, fit_y)
        val_acc.append(np.mean((held_y == classifier.predict(held_x)).astype(np.float32)))
        classifiers.append(classifier)
    classifier = classifiers[val_acc.index(max(val_acc))]
    out = classifier.predict_proba(validation_feature)
    return out[:, :1] / out[:, 1:] * n_s * 1.0 / n_t
