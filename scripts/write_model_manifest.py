"""Write manifest.json (sha256 of model_card.json and of every artefact the card lists) into a model folder.

The trainer's export writes it; use this for a folder exported before manifests existed, or after a deliberate
edit of the card (e.g. trainer/compare.py's model_selection): `python scripts/write_model_manifest.py resources/model`.
The card must be valid and its artefacts must match it, or nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pneumo_desktop.core.model_card import ModelIntegrityError, write_manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: write_model_manifest.py MODEL_DIR", file=sys.stderr)
        return 2
    try:
        path = write_manifest(Path(argv[0]))
    except ModelIntegrityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
