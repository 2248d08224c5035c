"""What a registered version carries besides its alias: a short description, a handful of tags, the link to its
logged model, and the digest of its weights (so a run that reproduces a registered encoder adds no version)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from pipeline.tracking import notes, uris

if TYPE_CHECKING:
    from sae.stack import StackedEncoder

WEIGHTS_TAG = "weights_sha256"
RUN_TAG = "run_id"
HEADLINE_NAME, HEADLINE_VALUE, HEADLINE_GREATER = "headline.metric", "headline.value", "headline.greater_is_better"


@dataclass(frozen=True)
class Headline:
    """The one number that ranks versions: metric name, value, and whether greater is better."""

    metric: str
    value: float
    greater_is_better: bool

    def beats(self, other: Headline) -> bool:
        """Strictly better than ``other`` (same metric assumed); NaN never wins, anything beats NaN."""
        if math.isnan(self.value):
            return False
        if math.isnan(other.value):
            return True
        mine, theirs = _shown(self.value), _shown(other.value)  # as the tags hold them: a 1e-9 gain is a tie
        return mine > theirs if self.greater_is_better else mine < theirs

    def tags(self) -> dict[str, str]:
        """As model version tags."""
        return {HEADLINE_NAME: self.metric, HEADLINE_VALUE: f"{_shown(self.value)!r}",  # as the registry lists it
                HEADLINE_GREATER: str(self.greater_is_better).lower()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Headline | None:
        """Read back from version tags; None when they are missing or unreadable."""
        try:
            return cls(tags[HEADLINE_NAME], float(tags[HEADLINE_VALUE]), tags[HEADLINE_GREATER] == "true")
        except (KeyError, ValueError):
            return None


def _shown(value: float) -> float:
    """``value`` to 6 significant digits: what a version's tag holds and the registry's list shows."""
    return float(f"{value:.6g}")


def weights_digest(encoder: StackedEncoder) -> str:
    """sha256 over the encoder's tensors (names, dtypes, shapes, bytes) and layer configs; not its metadata."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        data = tensor.detach().cpu().float().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.numpy().tobytes())
    scaling = encoder.scaling
    layers = [config.to_dict() for config in encoder.configs]
    digest.update(json.dumps({"scaling": [scaling.kind, scaling.offset, scaling.clip], "layers": layers},
                             sort_keys=True).encode())
    return digest.hexdigest()


def identical_version(client: MlflowClient, name: str, weights_sha256: str) -> ModelVersion | None:
    """The newest version of ``name`` whose weights digest is ``weights_sha256``, or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.{WEIGHTS_TAG} = '{weights_sha256}'")
    newest = max(found, key=lambda v: int(v.version), default=None)
    # Searches leave aliases out on some stores: read the version itself.
    return None if newest is None else client.get_model_version(name, str(newest.version))


def files_gone(client: MlflowClient, version: ModelVersion) -> str | None:
    """Where a version's files should be when that is a local folder that is gone or empty (``mlruns/`` deleted);
    None when they are there, or live on a server this cannot look into."""
    source = version.source or ""
    if source.startswith("models:/"):
        try:
            source = client.get_logged_model(source.removeprefix("models:/").split("/")[0]).artifact_location
        except MlflowException:
            return f"logged model {source} is gone"
    scheme = urlparse(source).scheme
    if scheme == "file":
        path = Path(unquote(urlparse(source).path))
    elif source and len(scheme) <= 1:  # a bare path (or a Windows drive); mlflow-artifacts:/, s3://... are servers'
        path = Path(source)
    else:
        return None
    return None if path.is_dir() and any(path.iterdir()) else str(path)


def version_tags(headline: Headline, run_id: str, weights_sha256: str | None,
                 extra: dict[str, str] | None = None) -> dict[str, str]:
    """The few tags a version row shows: headline (name, value, direction), run id, weights digest, extras."""
    tags = headline.tags() | {RUN_TAG: run_id}
    return tags | ({WEIGHTS_TAG: weights_sha256} if weights_sha256 else {}) | (extra or {})


def run_link(experiment_id: str, run_id: str, run_url: str | None) -> str:
    """The run's page: its server URL, else the UI's own path (works in ``mlflow ui`` on the same store)."""
    return run_url or uris.run_page(experiment_id, run_id)


def describe_version(client: MlflowClient, name: str, version: str, headline: Headline, alias: str, reason: str,
                     *, run_id: str, run_name: str | None = None, run_url: str | None = None,
                     details: str | None = None) -> None:
    """Write the version's description once its alias is decided (``notes.version_note``): headline, alias and
    why, the run, and ``details`` (what was trained, what ``predict`` takes)."""
    run = client.get_run(run_id)
    link = run_link(run.info.experiment_id, run_id, run_url)
    text = notes.version_note((headline.metric, headline.value, headline.greater_is_better), alias, reason,
                              (run_name or run.info.run_name, link), details)
    client.update_model_version(name, version, description=text)


def create_linked_version(client: MlflowClient, name: str, *, model_id: str, run_id: str, tags: dict[str, str]
                          ) -> ModelVersion:
    """A new version of logged model ``model_id``, linked both ways as ``mlflow.register_model`` links them."""
    # Like mlflow.register_model: the source is models:/<model id>, so the version resolves to the logged model.
    version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id)
    link_logged_model(client, model_id, name, version.version)
    return version


def link_logged_model(client: MlflowClient, model_id: str, name: str, version: int | str) -> None:
    """Add (name, version) to the logged model's ``mlflow.modelVersions`` tag: its page's "Registered models"."""
    try:
        model = client.get_logged_model(model_id)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        return
    linked: list[dict[str, Any]] = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    # The entry is what mlflow.register_model writes (the version as the store returns it); the UI lists it.
    if not any(entry.get("name") == name and str(entry.get("version")) == str(version) for entry in linked):
        linked.append({"name": name, "version": version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(linked)})
