"""A deployment says what it runs, and a stopped ``serve`` leaves its switch and its schedules agreeing."""

from prefect.client.orchestration import get_client

from flows.deploy import deactivate_schedules, description
from flows.pretrain import pretrain_flow
from pipeline.config import PipelineConfig


def config() -> PipelineConfig:
    return PipelineConfig.from_dict({"name": "digits", "data": {"source": "digits"},
                                     "layers": [{"hidden": 100}, {"hidden": 64}], "finetune": {"epochs": 0}})


def test_the_deployment_description_names_the_config_data_stack_and_where_results_go():
    text = description(config())
    assert text.startswith("Trains sae-pipeline config `digits` on data `digits` (inputs → 100 → 64)")
    assert "registers it as `digits-encoder`" in text and "MLflow experiment `digits`" in text


def test_stopping_serve_turns_the_schedules_off_beside_the_paused_switch():
    deployment = pretrain_flow.to_deployment(name="stop-me", cron="0 3 * * *",
                                             parameters={"config": config().model_dump(mode="json")})
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)  # what prefect's runner does when serve stops
        assert [s.active for s in client.read_deployment(deployment_id).schedules] == [True]  # the mismatch
    assert deactivate_schedules("sae-pretrain/stop-me") == 1
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.paused and [s.active for s in stored.schedules] == [False]
    assert deactivate_schedules("sae-pretrain/not-there") == 0
