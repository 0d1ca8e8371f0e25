"""The whole funnel from one command: retriever → index → ranker → re-ranking → evaluation.

    python -m recfunnel.funnel experiment=ml100k_funnel hydra.run.dir=DIR
    python -m recfunnel.funnel retriever.run_dir=RUN model=dcnv2        # reuse a trained retriever
    python -m recfunnel.funnel retriever.members=3                      # an ensemble of three retrievers
    python -m recfunnel.funnel experiment=ml100k_funnel_transformer     # + the transformer as a third source

Steps: (1) the retriever: ``retriever.run_dir`` if given (a list: an ensemble), else a ``recfunnel.train``
run with ``retriever.overrides`` trained into ``DIR/retriever`` (skipped when it already finished there;
``retriever.members=M``: M of them, ``DIR/retriever_1`` ... with seeds ``seed + 1000 m``, summed into
one ensemble, ``recfunnel.serving.retriever``); with ``first_stage.cooccurrence`` or a
``second_retriever`` (given as ``run_dir``, else trained into ``DIR/second_retriever`` with its
``overrides``), the first stage fuses them with the retriever by reciprocal rank
(``recfunnel.serving.fusion``);
(2) ranker pairs from the retriever (``pairs``: hard negatives from its top-K, uniform negatives);
(3) the DLRM ranker (``model``) trained with early stopping on the validation NDCG@10 of the ranked
lists; (4) re-ranking (``rerank``); (5) the funnel evaluated on valid and test per
``../shared/EVALUATION.md``.

Writes into DIR: ``metrics.json`` — the end of the funnel under the usual keys (``test/ndcg@10``,
...), each stage under ``test/retrieval/...``, ``test/ranked/...``, the ranker's pair metrics
(``test/ranker/auc``, ``logloss``), coverage, intra-list diversity, time per user, and what
removing each re-ranking stage changes (``test/rerank_without_<stage>/...``); ``funnel.md`` and
``funnel.png`` (the stage comparison); ``config.yaml``; ``overrides.yaml``; ``run_info.json``; ``checkpoints/``;
``retriever_run.txt`` (and ``second_retriever_run.txt``): the retriever runs it used.
Running the same command again in DIR resumes. Each model is its own W&B run (``job_type``
retriever / ranker / funnel) in one group, the run's name. The job itself is
``recfunnel.runs.run_funnel``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.config_checks import check_config


@hydra.main(version_base="1.3", config_path="../../configs", config_name="funnel")
@friendly_errors
def main(cfg: DictConfig) -> float:
    check_config(cfg)  # a bad value is answered before torch and Lightning load (about 10 s on 2 cores)
    from recfunnel.runs import monitored, run_funnel

    return monitored(cfg, run_funnel(cfg))


if __name__ == "__main__":
    main()
