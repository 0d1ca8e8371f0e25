"""Export a trained retrieval run's vectors as .npy: item vectors (catalogue order) and the user
(query) vectors of one split's targets, e.g. for `benchmarks/bench_index.py --vectors`.

    .venv/bin/python scripts/export_vectors.py RUN_DIR [--split test] [--out RUN_DIR/vectors]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from recfunnel.tasks.build import build_datamodule, build_task  # noqa: E402
from recfunnel.utils.cli import friendly_errors  # noqa: E402
from recfunnel.utils.errors import RecfunnelError  # noqa: E402


def export(run_dir: Path, split: str, out: Path) -> tuple[Path, Path]:
    cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / "best.ckpt"
    for path in (cfg_path, ckpt):
        if not path.is_file():
            raise RecfunnelError(f"{path} is missing: RUN_DIR must be a finished `recfunnel.train` run directory")
    cfg = OmegaConf.load(cfg_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    task.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"])
    task.eval()
    with torch.no_grad():
        items = task.net.item_vectors(dm.catalogue()).numpy()
        users = torch.cat([task.net.user_vectors(b) for b in dm.eval_dataloader(split)]).numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "items.npy", items)
    np.save(out / f"users_{split}.npy", users)
    return out / "items.npy", out / f"users_{split}.npy"


@friendly_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for path in export(args.run_dir, args.split, args.out or args.run_dir / "vectors"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
