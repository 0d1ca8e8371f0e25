"""Score a model on valid and test by ``../shared/EVALUATION.md``; write ``metrics.json``.

    python -m recfunnel.evaluate model=popularity hydra.run.dir=DIR
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recfunnel.runs import evaluate
from recfunnel.utils.cli import friendly_errors


@hydra.main(version_base="1.3", config_path="../../configs", config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> dict[str, float]:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
