"""Score a model on valid and test by ``../shared/EVALUATION.md``; write ``metrics.json``.

    python -m recfunnel.evaluate model=popularity hydra.run.dir=DIR
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from recfunnel.data.sources import load_split
from recfunnel.eval.protocol import EvalSet, evaluate
from recfunnel.eval.report import flatten, print_metrics, write_metrics
from recfunnel.runs import open_run
from recfunnel.utils.cli import friendly_errors

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../../configs", config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> dict[str, float]:
    with open_run(cfg):
        data = load_split(cfg.data, cfg.paths.data_dir)
        model = hydra.utils.instantiate(cfg.model).fit(data)
        results = {}
        for split in ("valid", "test"):
            evalset = EvalSet.build(data, split)
            results[split] = evaluate(model.scorer(evalset), evalset, data.num_items, chunk_size=cfg.eval_chunk_size)
        metrics = flatten(results)
        path = write_metrics(cfg.paths.output_dir, metrics)
    print_metrics(f"{cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name}", metrics)
    log.info("wrote %s", path)
    print(f"metrics: {Path(path).resolve()}")
    return metrics


if __name__ == "__main__":
    main()
