"""Exports scikit-learn's bundled handwritten digits (8×8 images, 1,797 rows, 10 classes;
a copy of the UCI optdigits test set) to CSV for steadygrad's examples, experiments and
tests: digits_train.csv (the first 1,438 rows of a fixed shuffle) and digits_valid.csv
(the other 359). Columns p0..p63 hold pixel intensities 0..16, `label` the digit.

    python3 -m venv /tmp/py && /tmp/py/bin/pip install scikit-learn
    /tmp/py/bin/python data/make_digits.py
"""
import csv
import os

import numpy as np
from sklearn.datasets import load_digits

here = os.path.dirname(os.path.abspath(__file__))
d = load_digits()
order = np.random.default_rng(0).permutation(len(d.target))
x, y = d.data[order].astype(int), d.target[order]
split = int(round(0.8 * len(y)))
for name, rows in (("digits_train.csv", slice(0, split)), ("digits_valid.csv", slice(split, None))):
    with open(os.path.join(here, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"p{i}" for i in range(64)] + ["label"])
        for xi, yi in zip(x[rows], y[rows]):
            w.writerow(list(xi) + [int(yi)])
