"""Prefect <-> MLflow links, one click each way: tags and a description link naming the flow run for the MLflow
run, and the flow run's artifacts (a link to the MLflow run, the results table, the registered version), keyed
per config so configs don't clash. Each artifact's description is itself a link, so its card in the Prefect UI
opens the page in one click; the flow run's log prints the MLflow run's page too.

Artifacts are created from the flow's own body, so they hang off the flow run (not off a task run).
"""

from __future__ import annotations

import re

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_UI_URL

from pipeline.run.results import PretrainResult
from pipeline.tables import markdown_table
from pipeline.tracking.markdown import link
from pipeline.tracking.notes import Origin
from pipeline.tracking.uris import is_server, model_version_page, run_page_url, ui_base_url, ui_command

LOCAL_PREFECT_UI = "http://127.0.0.1:4200"  # `prefect server start` serves the flow runs a temporary server kept


def artifact_key(config_name: str, what: str) -> str:
    """``<config name>-<what>`` in the lowercase letters, digits and dashes Prefect allows in artifact keys."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{config_name}-{what}".lower()).strip("-")


def flow_run_url(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI (the default local server's when only a temporary one ran)."""
    base = PREFECT_UI_URL.value() or LOCAL_PREFECT_UI
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


FLOW_RUN_TAG, DEPLOYMENT_TAG = "sae.flow_run", "sae.deployment"  # short keys: the UI squeezes long ones


def flow_run_tags(flow_run_id: str | None, deployment_name: str | None = None) -> dict[str, str]:
    """Tags for the MLflow run: the flow run's id and the deployment it ran from (if any); its page is one click
    away in the run's description (``current_origin``), where a link is clickable."""
    if flow_run_id is None:
        return {}
    return {FLOW_RUN_TAG: str(flow_run_id)} | ({DEPLOYMENT_TAG: deployment_name} if deployment_name else {})


def current_origin(name: str, search: str | None = None) -> Origin:
    """The flow run this code runs in, for the MLflow run's description: its name and page (and the search)."""
    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return Origin(search=search)
    temporary = "" if PREFECT_UI_URL.value() else " (a temporary server ran it: `prefect server start` serves it)"
    return Origin((name + temporary, flow_run_url(str(flow_run_id))), search)


def current_flow_run_tags() -> dict[str, str]:
    """``flow_run_tags`` of the flow run this code runs in."""
    # The deployment's name costs API calls: asked only for a run from a deployment (prefect.runtime's
    # deployment.get_id fetches the flow run again even when the run context says it has none: 0.1 s).
    context = FlowRunContext.get()
    from_deployment = context is None or context.flow_run is None or context.flow_run.deployment_id is not None
    return flow_run_tags(flow_run.get_id(), deployment.get_name() if from_deployment else None)


def _where(tracking_uri: str) -> str:
    command = ui_command(tracking_uri)
    return f"MLflow server {tracking_uri}" if command is None else f"local store {tracking_uri}: open with {command}"


def publish_run_link(config_name: str, tracking_uri: str, experiment_id: str, run_id: str, run_name: str,
                     what: str = "mlflow-run") -> str:
    """Link artifact ``<config>-<what>`` on the flow run pointing at the MLflow run, whose card links it too;
    the page is logged to the flow run's log. Returns the page's URL."""
    url = run_page_url(tracking_uri, experiment_id, run_id)
    local = "" if is_server(tracking_uri) else f" (local store: open with {ui_command(tracking_uri)})"
    create_link_artifact(key=artifact_key(config_name, what), link=url, link_text=f"MLflow run {run_name}{local}",
                         description=f"{link(f'MLflow run {run_name}', url)} in {tracking_uri}{local}")
    get_run_logger().info("MLflow run %s: %s%s", run_name, url, local)
    return url


def publish_results(result: PretrainResult) -> None:
    """Markdown artifact ``<config>-results`` and, when registered, link ``<config>-model-version``."""
    name, value, _ = result.headline()
    config_name = result.config.name
    tracked = result.tracked
    run_link = "" if tracked is None else \
        f" ({link('MLflow run', run_page_url(tracked.tracking_uri, tracked.experiment_id, tracked.run_id))})"
    create_markdown_artifact(
        key=artifact_key(config_name, "results"),
        markdown=f"# {config_name}: {result.data.source}\n\n{result.data.counts_line().capitalize()}.\n\n"
        f"{markdown_table(result.rows())}\n\n"
        f"**{name}**: {value:.4f}\n",
        description=f"Per-layer losses, sparsity, probe and fine-tuned accuracies; {name} {value:.4f}{run_link}",
    )
    if tracked is None or tracked.registration is None:
        return
    reg = tracked.registration
    page = f"{ui_base_url(tracked.tracking_uri)}/{model_version_page(reg.model_name, reg.model_version)}"
    create_link_artifact(
        key=artifact_key(config_name, "model-version"), link=page,
        link_text=f"{reg.model_name} version {reg.model_version} (@{reg.alias}): {reg.model_uri}",
        description=f"{link(f'{reg.model_name} version {reg.model_version}', page)} `@{reg.alias}`: {reg.reason}; "
                    f"{_where(tracked.tracking_uri)}",
    )


def publish_search(config_name: str, table: str, best: str | None) -> None:
    """Markdown artifact ``<config>-search``: every trial, and the best stack's run."""
    create_markdown_artifact(key=artifact_key(config_name, "search"),
                             markdown=f"# Search of {config_name}\n\n```\n{table}\n```\n\n{best or ''}\n",
                             description=f"Every trial of the search; best stack: {best or 'not run'}")
