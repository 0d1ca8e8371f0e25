"""Score a model on valid and test by ``../shared/EVALUATION.md``; write ``metrics.json``.

    python -m recfunnel.evaluate model=popularity hydra.run.dir=DIR
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.config_checks import check_config


@hydra.main(version_base="1.3", config_path="../../configs", config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> dict[str, float]:
    check_config(cfg)  # a bad value is answered before torch and Lightning load (about 10 s on 2 cores)
    from recfunnel.runs import evaluate

    return evaluate(cfg)


if __name__ == "__main__":
    main()
