"""Recall a best stack that an identical earlier search already fine-tuned, evaluated and registered.

A second ``tune`` of the same config on the same data finds every trial in its studies and the same best
config; running the finish step again (the pretrain flow) would fine-tune, evaluate and register that stack
once more, for the same numbers and no new model version (identical weights share one). Instead the best
stack's MLflow run is tagged with a digest of (best config, data fingerprint, code commit), and a later
search with that digest reads the run's headline and registration back: when the run FINISHED, is not
deleted, and its model version still exists. ``sae-pipeline run best.yaml`` always runs the stack again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from pipeline.run.results import Registration, TrackedRun
from pipeline.tracking import store, uris

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.config import PipelineConfig
    from pipeline.run.results import PretrainResult

DIGEST_TAG = "sae.tune.digest"  # keys of at most 15 characters: MLflow's tag chips cut longer ones
HEADLINE_TAG = "sae.tune.score"
REGISTRATION_TAG = "sae.tune.model"


@dataclass
class RecalledStack:
    """The best stack's earlier run, read back: stands in for a PretrainResult in a TuneResult."""

    tracked: TrackedRun
    metric: tuple[str, float, bool]
    recalled: bool = True

    def headline(self) -> tuple[str, float, bool]:
        """(metric name, value, greater is better), as ``PretrainResult.headline`` gave it then."""
        return self.metric


def stack_digest(best_config: PipelineConfig, data_fingerprint: str) -> str:
    """sha256 of the best config, the data's fingerprint and the code's git commit (None outside git)."""
    payload = {"config": best_config.model_dump(mode="json"), "data": data_fingerprint, "commit": store.git_commit()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def remember_stack(client: MlflowClient, pretrain: PretrainResult, digest: str,
                   extra: dict[str, str] | None = None) -> None:
    """Tag the best stack's run with ``digest``, its headline and its registration (for ``recall_stack``), and
    ``extra`` tags, in one request."""
    tracked = pretrain.tracked
    assert tracked is not None, "the pretrain flow tracks its run"
    tags: dict[str, Any] = {DIGEST_TAG: digest, HEADLINE_TAG: json.dumps(list(pretrain.headline())), **(extra or {})}
    if tracked.registration is not None:
        tags[REGISTRATION_TAG] = json.dumps(asdict(tracked.registration))
    client.log_batch(tracked.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def recall_stack(client: MlflowClient, experiment_id: str, uri: str, digest: str) -> RecalledStack | None:
    """The latest FINISHED run tagged ``digest`` as a RecalledStack; None when there is none or its version is gone."""
    runs = client.search_runs([experiment_id], f"tags.`{DIGEST_TAG}` = '{digest}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or HEADLINE_TAG not in runs[0].data.tags:
        return None
    run, registration = runs[0], None
    if REGISTRATION_TAG in run.data.tags:
        registration = Registration(**json.loads(run.data.tags[REGISTRATION_TAG]))
        try:
            client.get_model_version(registration.model_name, registration.model_version)
        except MlflowException:  # deleted from the registry since: run the stack again
            return None
        registration = replace(registration, new_version=False,
                               reason=f"recalled from run {run.info.run_id}: {registration.reason}")
    name, value, greater = json.loads(run.data.tags[HEADLINE_TAG])
    url = uris.run_page_url(uri, experiment_id, run.info.run_id) if uris.is_server(uri) else None
    tracked = TrackedRun(run.info.run_id, experiment_id, uri, run_url=url,
                         model_uri=registration.model_uri if registration else None, registration=registration)
    return RecalledStack(tracked, (str(name), float(value), bool(greater)))
