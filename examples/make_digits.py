"""Write scikit-learn's bundled digits (1,797 8×8 images, offline) as train/test .npz files.

Usage: python examples/make_digits.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main(out: Path) -> None:
    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    out.mkdir(parents=True, exist_ok=True)
    classes = np.array([str(c) for c in range(10)])
    np.savez(out / "digits-train.npz", x=x_tr, y=y_tr, classes=classes)
    np.savez(out / "digits-test.npz", x=x_te, y=y_te, classes=classes)
    print(f"wrote {out}/digits-train.npz ({len(y_tr)}) and digits-test.npz ({len(y_te)})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
