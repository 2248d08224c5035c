"""Prefect artifacts of a pretraining run: the results table, a link to the MLflow run, the model version."""

from __future__ import annotations

from urllib.parse import quote

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.results import PretrainResult, markdown_table

LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a sqlite store


def mlflow_base_url(tracking_uri: str) -> str:
    """The MLflow UI serving ``tracking_uri``: the server itself, or `make ui` for a local store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


@task(name="publish-artifacts", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def publish_artifacts(result: PretrainResult) -> None:
    """Markdown results table, link to the MLflow parent run, and the registered model version."""
    extra = result.extra
    name, value, _ = result.headline()
    create_markdown_artifact(
        key="sae-results",
        markdown=f"# {result.config.name}: {result.data.source}\n\n{markdown_table(result.rows())}\n\n"
        f"**{name}**: {value:.4f}\n",
        description="Per-layer losses, sparsity, probe and fine-tuned accuracies",
    )
    if not extra.get("run_id"):
        return
    base = mlflow_base_url(str(extra.get("tracking_uri", "")))
    local = "" if base != LOCAL_UI else " (local store: open it with `make ui`)"
    run_url = extra.get("run_url") or f"{base}/#/experiments/{extra.get('experiment_id')}/runs/{extra['run_id']}"
    create_link_artifact(key="mlflow-run", link=run_url, link_text=f"MLflow run {extra['run_id']}{local}",
                         description=f"MLflow parent run at {extra.get('tracking_uri')}")
    if extra.get("model_version") is None:
        return
    model, version = str(extra.get("model_name")), extra["model_version"]
    create_link_artifact(
        key="sae-model-version",
        link=f"{base}/#/models/{quote(model)}/versions/{version}",
        link_text=f"{model} version {version} (@{extra.get('alias')}): {extra.get('model_uri')}{local}",
        description=str(extra.get("registration_reason", "")),
    )
