"""Train a model from config, restore the checkpoint best on validation, score valid and test.

    python -m recfunnel.train experiment=ml100k_two_tower hydra.run.dir=DIR
    python -m recfunnel.train -m hparams_search=two_tower_optuna      # a sweep

Writes into the run directory: ``metrics.json`` (``valid/...`` and ``test/...``), ``config.yaml``
(resolved), ``overrides.yaml`` (the command line's), ``run_info.json`` (run id, git commit, versions,
seed), ``checkpoints/{best,last}.ckpt``, a CSV log and, for retrieval models, ``index/`` (exact
inner-product FAISS index of the selected model's item vectors, with the item-id map; logged to W&B
as an artifact too). Running the same command again in the same directory resumes from
``last.ckpt``. Returns the validation metric named by ``monitor`` (what sweeps optimise). The job
itself is ``recfunnel.runs.train``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.config_checks import check_config


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float:
    check_config(cfg)  # a bad value is answered before torch and Lightning load (about 10 s on 2 cores)
    from recfunnel.runs import monitored, train

    return monitored(cfg, train(cfg))


if __name__ == "__main__":
    main()
