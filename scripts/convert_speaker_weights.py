#!/usr/bin/env python3
"""Make the packaged speaker-encoder weights from resemblyzer's original, once: the output is committed.

    .venv/bin/python scripts/convert_speaker_weights.py      # pip downloads the wheel (--no-deps), hash-checked
    .venv/bin/python scripts/convert_speaker_weights.py --wheel Resemblyzer-0.1.4-py3-none-any.whl

Reads ``resemblyzer/pretrained.pt`` from the ``resemblyzer==0.1.4`` wheel (its sha256 is the one pinned in
``requirements/speakers-reference.txt``, and the checkpoint's own sha256 is pinned below), takes the arrays of its
``model_state`` that the encoder needs (``ENCODER_ARRAYS`` in echopanel/speakers/weights.py: the LSTM and the Linear
layer; float32, values unchanged) and writes, in ``echopanel/speakers/data/``:

- ``ge2e.npz``: those arrays, one ``.npy`` each, uncompressed, in name order, with fixed zip timestamps, so the
  same original always gives the same bytes (tests/speakers/test_packaged_weights.py converts again and compares);
- ``LICENSE``: the wheel's own licence file (Apache-2.0, "Copyright 2019 Resemble.AI"), verbatim;
- ``NOTICE``: who made the weights, where they come from and what was changed.

The torch pickle is read without torch and without running code from it (echopanel/speakers/weights.py).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echopanel.speakers.weights import encoder_arrays_of_checkpoint  # noqa: E402

REQUIREMENT = ROOT / "requirements" / "speakers-reference.txt"
OUT = ROOT / "echopanel" / "speakers" / "data"
MEMBER = "resemblyzer/pretrained.pt"
LICENSE_MEMBER = "Resemblyzer-0.1.4.dist-info/LICENSE"
PRETRAINED_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"  # resemblyzer/pretrained.pt
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pinned_wheel() -> tuple[str, str]:
    """(requirement, sha256) of the original wheel, from requirements/speakers-reference.txt."""
    text = REQUIREMENT.read_text()
    req = re.search(r"^(resemblyzer==[\w.]+)", text, re.M)
    digest = re.search(r"--hash=sha256:([0-9a-f]{64})", text)
    if req is None or digest is None:
        raise SystemExit(f"{REQUIREMENT}: no pinned resemblyzer requirement with a sha256")
    return req.group(1), digest.group(1)


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel (pip checks its hash)."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
    subprocess.run([*pip, "-r", str(REQUIREMENT), "-d", str(dest)], check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {dest}, found {wheels}")
    return wheels[0]


def read_wheel(wheel: Path) -> tuple[bytes, bytes]:
    """(pretrained.pt, LICENSE) from the wheel, after checking the wheel's sha256 against the pinned one."""
    _, want = pinned_wheel()
    got = sha256(wheel.read_bytes())
    if got != want:
        raise SystemExit(f"{wheel}: sha256 {got}, but {REQUIREMENT.name} pins {want}")
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(MEMBER), zf.read(LICENSE_MEMBER)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` numpy loads (``np.load``), byte-reproducible: sorted names, stored, fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name], dtype="<f4"), allow_pickle=False)
    return buf.getvalue()


def notice(npz_sha256: str) -> str:
    requirement, wheel_sha256 = pinned_wheel()
    return f"""EchoPanel: speaker-encoder weights (echopanel/speakers/data/ge2e.npz)

This directory holds the weights of the GE2E speaker encoder ("voice encoder") of Resemblyzer,
https://github.com/resemble-ai/Resemblyzer, by Corentin Jemine, Copyright 2019 Resemble.AI, distributed under the
Apache License, Version 2.0 (LICENSE in this directory, copied verbatim from the resemblyzer wheel).

Source: resemblyzer/pretrained.pt (sha256 {PRETRAINED_SHA256})
in the PyPI wheel {requirement} (Resemblyzer-0.1.4-py3-none-any.whl, sha256 {wheel_sha256}).

Changes made (by scripts/convert_speaker_weights.py in the EchoPanel repository): the PyTorch checkpoint was
converted to a NumPy .npz. Kept, with their float32 values unchanged and their PyTorch names: the tensors
lstm.weight_ih_l0..2, lstm.weight_hh_l0..2, lstm.bias_ih_l0..2, lstm.bias_hh_l0..2, linear.weight and linear.bias
of its model_state. Dropped: similarity_weight and similarity_bias (used only in training), the optimizer state and
the step count. The result, ge2e.npz, has sha256 {npz_sha256}.
"""


def convert(pretrained: bytes, license_text: bytes, out: Path) -> str:
    """Write ge2e.npz, LICENSE and NOTICE into ``out`` from the original checkpoint's bytes; the npz's sha256."""
    got = sha256(pretrained)
    if got != PRETRAINED_SHA256:
        raise SystemExit(f"pretrained.pt: sha256 {got}, expected {PRETRAINED_SHA256}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pretrained.pt"
        path.write_bytes(pretrained)
        arrays = encoder_arrays_of_checkpoint(path)
    data = npz_bytes(arrays)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ge2e.npz").write_bytes(data)
    (out / "LICENSE").write_bytes(license_text)
    digest = sha256(data)
    (out / "NOTICE").write_text(notice(digest))
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wheel", type=Path, help="the resemblyzer 0.1.4 wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        pretrained, license_text = read_wheel(wheel)
        digest = convert(pretrained, license_text, args.out)
    size = (args.out / "ge2e.npz").stat().st_size
    print(f"wrote {args.out}/ge2e.npz ({size} bytes, sha256 {digest}), LICENSE, NOTICE")


if __name__ == "__main__":
    main()
