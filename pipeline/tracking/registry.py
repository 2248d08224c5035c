"""Model registry policy: every run adds a version (unless its weights are already registered); the alias goes
to it only when its headline metric wins.

A new version gets ``alias`` (default ``champion``) when no version holds that alias yet, or when its headline
metric (``PretrainResult.headline()``) beats the holder's, read from the holder's version tags; otherwise it
gets ``challenger``. Versions measured by different headline metrics are not compared (the new one becomes
challenger). The reason is logged, stored as the version tag ``reason``, written into the
version's description and returned. What a version carries besides (description, tags, logged-model link,
weights digest) is ``pipeline.tracking.versions``.

Concurrent registrations: reading the holder and then moving the alias is a race (two runs could both beat
a stale holder, the worse one moving the alias last). On a sqlite store the decision and the move happen
under an exclusive file lock beside the database (``<db>.registry.lock``), so registrations are serialised.
MLflow servers offer no compare-and-set on aliases: there the holder is re-read just before the move and
the decision is taken again if it changed, which narrows the window to one request but cannot close it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from pipeline.run.results import Registration
from pipeline.tracking import versions
from pipeline.tracking.store import use_tracking_uri
from pipeline.tracking.uris import sqlite_path
from pipeline.tracking.versions import Headline

try:
    import fcntl
except ImportError:  # Windows: no flock; only the optimistic re-check guards the alias there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
REASON_TAG = "reason"  # why the alias went where it did (a short key: lists squeeze long keys of long values)


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model ``name`` unless it exists."""
    try:
        client.create_registered_model(name, description="Stacked sparse-autoencoder encoders (sae-pipeline).")
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def alias_holder(client: MlflowClient, name: str, alias: str) -> tuple[str, Headline | None, str | None] | None:
    """(version, its headline, where its files went missing or None) of the version holding ``alias``, or None
    when no version holds it."""
    try:
        held = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return str(held.version), Headline.from_tags(dict(held.tags)), versions.files_gone(client, held)


def choose_alias(new: Headline, holder: tuple[str, Headline | None] | tuple[str, Headline | None, str | None] | None,
                 alias: str) -> tuple[str, str]:
    """(alias for the new version, why): ``alias`` when it wins, nobody holds it or the holder's files are gone,
    else ``challenger``."""
    if holder is None:
        return alias, f"no version holds @{alias} yet"
    version, held, gone = (*holder, None)[:3]
    if gone is not None:
        return alias, f"version {version} holding @{alias} lost its files ({gone})"
    if held is None:
        return alias, f"version {version} holding @{alias} has no headline tags"
    if held.metric != new.metric:
        return CHALLENGER, (f"version {version} holding @{alias} is ranked by {held.metric}, this one by "
                            f"{new.metric}: not comparable, so @{CHALLENGER}")
    better = "higher" if new.greater_is_better else "lower"
    if new.beats(held):
        return alias, f"{new.metric} {new.value:.6g} beats {held.value:.6g} of version {version} ({better} is better)"
    return CHALLENGER, (f"{new.metric} {new.value:.6g} does not beat {held.value:.6g} of version {version} "
                        f"holding @{alias} ({better} is better), so @{CHALLENGER}")


def move_alias(client: MlflowClient, name: str, alias: str, headline: Headline, version: str,
               tries: int = 5) -> tuple[str, str]:
    """Give ``version`` ``alias`` or ``challenger`` by policy; re-decide when the holder changed while deciding."""
    holder = alias_holder(client, name, alias)
    for _ in range(tries):
        chosen, reason = choose_alias(headline, holder, alias)
        if chosen == alias:
            current = alias_holder(client, name, alias)
            if _version(current) != _version(holder):  # moved meanwhile by another registration: compare again
                holder = current
                continue
        client.set_registered_model_alias(name, chosen, version)
        return chosen, reason
    client.set_registered_model_alias(name, CHALLENGER, version)
    return CHALLENGER, f"@{alias} kept moving during {tries} tries, so @{CHALLENGER}"


def _version(holder: tuple[str, Headline | None, str | None] | None) -> str | None:
    return None if holder is None else holder[0]


@contextlib.contextmanager
def registry_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive lock held across deciding and moving an alias: a file lock for sqlite stores, else nothing."""
    database = sqlite_path(tracking_uri)
    if fcntl is None or database is None:
        yield
        return
    # A separate file: closing any descriptor of the database itself would drop sqlite's own POSIX locks.
    with open(database.with_name(f"{database.name}.registry.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def register_model(
    client: MlflowClient,
    *,
    name: str,
    source: str,
    run_id: str,
    headline: Headline,
    alias: str = "champion",
    model_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    weights_sha256: str | None = None,
    run_name: str | None = None,
    run_url: str | None = None,
    details: str | None = None,
    ineligible: str | None = None,
) -> Registration:
    """Add ``source`` as a new version of ``name`` (described, tagged, linked); set the alias by policy.

    A version whose ``weights_sha256`` is already registered is not added again, unless its files are gone: the
    registration names the existing version and says why (``new_version=False``). An ``ineligible`` run (a
    degenerate result: why) gets ``challenger`` whatever its headline.
    """
    ensure_registered_model(client, name)
    tags = versions.version_tags(headline, run_id, weights_sha256, extra_tags)
    with registry_lock(client.tracking_uri):
        if weights_sha256 and (same := versions.identical_version(client, name, weights_sha256)) is not None:
            gone = versions.files_gone(client, same)
            if gone is None:
                return unchanged(name, same)
            log.warning("%s version %s has the same weights but its files are gone (%s): adding a new version",
                        name, same.version, gone)
        # The store looks a models:/<id> source up through a client on MLflow's global URI: point it at ours.
        with use_tracking_uri(client.tracking_uri):
            if model_id is not None:
                version = versions.create_linked_version(client, name, model_id=model_id, run_id=run_id, tags=tags)
            else:
                version = client.create_model_version(name, source, run_id=run_id, tags=tags)
        if ineligible:
            chosen, reason = CHALLENGER, f"not eligible for @{alias}: {ineligible}"
            client.set_registered_model_alias(name, chosen, version.version)
        else:
            chosen, reason = move_alias(client, name, alias, headline, str(version.version))
    client.set_model_version_tag(name, version.version, REASON_TAG, reason)
    versions.describe_version(client, name, str(version.version), headline, chosen, reason, run_id=run_id,
                              run_name=run_name, run_url=run_url, details=details)
    (log.warning if ineligible else log.info)("registered %s version %s as @%s: %s", name, version.version, chosen,
                                              reason)
    return Registration(name, str(version.version), chosen, f"models:/{name}@{chosen}",
                        f"models:/{name}/{version.version}", reason)


def unchanged(name: str, same: ModelVersion) -> Registration:
    """The registration of a run whose weights equal registered version ``same``: no new version."""
    held = sorted(same.aliases) if same.aliases else []
    alias = held[0] if held else ""
    where = f" (@{', @'.join(held)})" if held else ""
    reason = f"weights identical to version {same.version}{where}: no new version added"
    log.info("%s: %s", name, reason)
    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{same.version}"
    return Registration(name, str(same.version), alias, uri, f"models:/{name}/{same.version}", reason,
                        new_version=False)
