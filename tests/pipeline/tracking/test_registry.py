"""Registry policy: the alias moves only to a version whose headline metric beats the holder's, also under concurrency."""

import contextlib
import math
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.datasets import load_digits

import pipeline.tracking.registry as registry_module
from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from pipeline.tracking import versions
from pipeline.tracking.registry import CHALLENGER, choose_alias, register_model
from pipeline.tracking.runs import MlflowTracking
from pipeline.tracking.versions import Headline, weights_digest
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder


def test_headline_beats_respects_the_direction_and_never_lets_nan_win():
    assert Headline("acc", 0.9, True).beats(Headline("acc", 0.8, True))
    assert not Headline("acc", 0.8, True).beats(Headline("acc", 0.8, True))
    assert Headline("loss", 0.1, False).beats(Headline("loss", 0.2, False))
    assert not Headline("loss", 0.3, False).beats(Headline("loss", 0.2, False))
    assert not Headline("acc", math.nan, True).beats(Headline("acc", 0.1, True))
    assert Headline("acc", 0.1, True).beats(Headline("acc", math.nan, True))


def test_headline_survives_a_round_trip_through_version_tags_to_six_digits():
    headline = Headline("layer_2.test_loss", 0.123456789, False)
    assert headline.tags()["headline.value"] == "0.123457"  # not 16 digits in the registry's list
    assert Headline.from_tags(headline.tags()) == Headline("layer_2.test_loss", 0.123457, False)
    assert not Headline("acc", 0.9527777777, True).beats(Headline("acc", 0.952778, True))  # what the tag held
    assert Headline.from_tags({"headline.metric": "x"}) is None


@pytest.mark.parametrize(
    ("holder", "alias", "says"),
    [
        (None, "champion", "no version holds"),
        (("3", None), "champion", "has no headline tags"),
        (("3", Headline("acc", 0.8, True)), "champion", "beats 0.8 of version 3"),
        (("3", Headline("acc", 0.95, True)), CHALLENGER, "does not beat 0.95"),
        (("3", Headline("acc", 0.9, True)), CHALLENGER, "does not beat"),
        (("3", Headline("probe", 0.5, True)), CHALLENGER, "not comparable"),
    ],
    ids=["first", "untagged-holder", "better", "worse", "tie", "other-metric"],
)
def test_choose_alias_gives_the_alias_only_to_a_winner_and_says_why(holder, alias, says):
    chosen, reason = choose_alias(Headline("acc", 0.9, True), holder, "champion")
    assert chosen == alias and says in reason


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (each test registers its own model name): creating one costs seconds."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # nothing may fall back to a ./mlflow.db in the checkout
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def client(store):
    return MlflowClient(store)


def register(client, tmp_path, value, metric="acc", greater=True, name="enc", weights=None, ineligible=None):
    run = client.create_run("0")
    source = tmp_path / f"model-{run.info.run_id}"
    source.mkdir()
    (source / "MLmodel").write_text("a model's files")
    return register_model(client, name=name, source=source.as_uri(), run_id=run.info.run_id,
                          headline=Headline(metric, value, greater), weights_sha256=weights, ineligible=ineligible)


def holder(client, alias="champion", name="enc"):
    return str(client.get_model_version_by_alias(name, alias).version)


def test_versions_carry_headline_and_run_tags_and_the_alias_follows_the_best(client, tmp_path):
    first = register(client, tmp_path, 0.8)
    assert (first.model_version, first.alias, first.model_uri) == ("1", "champion", "models:/enc@champion")
    version = client.get_model_version("enc", "1")
    assert set(version.tags) == {"headline.metric", "headline.value", "headline.greater_is_better", "run_id",
                                 "reason"}  # a handful, not one per metric
    assert version.tags["run_id"] == version.run_id and "no version holds" in version.tags["reason"]
    assert "no version holds `@champion`" in version.description and "@champion " not in version.description

    worse = register(client, tmp_path, 0.7)
    assert worse.alias == CHALLENGER and holder(client) == "1"

    # 0.75 beats the latest version (0.7) but not the holder (0.8): the comparison is with the holder.
    between = register(client, tmp_path, 0.75)
    assert between.alias == CHALLENGER and "does not beat 0.8 of version 1" in between.reason
    assert holder(client) == "1" and holder(client, CHALLENGER) == "3"

    better = register(client, tmp_path, 0.85)
    assert better.alias == "champion" and better.version_uri == "models:/enc/4"
    assert holder(client) == "4" and holder(client, CHALLENGER) == "3"
    assert "beats 0.8 of version 1" in client.get_model_version("enc", "4").tags["reason"]

    other = register(client, tmp_path, 0.99, metric="probe")
    assert other.alias == CHALLENGER and "not comparable" in other.reason


def test_lower_is_better_moves_the_alias_only_to_a_lower_value(client, tmp_path):
    def loss(value):
        return register(client, tmp_path, value, metric="loss", greater=False, name="by-loss")

    assert loss(0.30).alias == "champion"
    assert loss(0.40).alias == CHALLENGER
    lower = loss(0.20)
    assert lower.alias == "champion" and "lower is better" in lower.reason and holder(client, name="by-loss") == "3"


def test_two_concurrent_registrations_leave_the_alias_with_the_better_one_and_lose_no_version(
        client, tmp_path, monkeypatch):
    register(client, tmp_path, 0.8, name="race")  # version 1 holds @champion
    runs = {value: client.create_run("0").info.run_id for value in (0.85, 0.9)}
    uri, both_read = client.tracking_uri, threading.Barrier(2, timeout=2)
    read_holder, set_alias = registry_module.alias_holder, MlflowClient.set_registered_model_alias

    def racing_read(c, name, alias):
        """Both threads read the holder before either moves the alias (unless the lock serialises them)."""
        held = read_holder(c, name, alias)
        if not getattr(local, "waited", False):
            local.waited = True
            with contextlib.suppress(threading.BrokenBarrierError):  # the other thread waits for our lock
                both_read.wait()
        return held

    def slow_worse_move(self, name, alias, version):
        if local.value == 0.85:
            time.sleep(0.5)  # the worse one moves the alias last
        return set_alias(self, name, alias, version)

    local = threading.local()
    monkeypatch.setattr(registry_module, "alias_holder", racing_read)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", slow_worse_move)
    results, errors = {}, []

    def worker(value):
        local.value = value
        source = tmp_path / f"model-{value}"
        source.mkdir()
        (source / "MLmodel").write_text("a model's files")  # a version whose folder is empty lost its files
        try:
            results[value] = register_model(MlflowClient(uri), name="race", source=source.as_uri(),
                                            run_id=runs[value], headline=Headline("acc", value, True))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(value,)) for value in (0.85, 0.9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    versions = {v.tags["headline.value"]: str(v.version) for v in client.search_model_versions("name='race'")}
    assert set(versions) == {"0.8", "0.85", "0.9"} and sorted(versions.values()) == ["1", "2", "3"]
    assert holder(client, name="race") == versions["0.9"] == results[0.9].model_version and results[0.9].alias == "champion"


def test_an_unlabelled_run_is_ranked_by_test_loss_and_the_alias_goes_to_the_lower_one(store, tmp_path):
    np.save(tmp_path / "x.npy", load_digits().data[:600].astype(np.float32))  # features only: no labels
    uri = store

    def run(epochs):
        config = PipelineConfig.from_dict({
            "name": "unlabelled", "tracking_uri": uri, "data": {"source": str(tmp_path / "x.npy")},
            "defaults": {"epochs": epochs, "batch_size": 64, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
            "layers": [{"hidden": 8}]})
        return pretrain_stack(config, MlflowTracking())

    short, longer = run(1), run(6)
    client = MlflowClient(uri)
    losses = [r.layers[0].test_metrics["loss"] for r in (short, longer)]
    assert short.headline() == ("layer_1.test_loss", losses[0], False) and short.finetuned is None
    assert losses[1] < losses[0]
    assert short.tracked.registration.alias == "champion"
    assert longer.tracked.registration.alias == "champion" and "lower is better" in longer.tracked.registration.reason
    assert str(client.get_model_version_by_alias("unlabelled-encoder", "champion").version) == "2"
    tags = client.get_model_version("unlabelled-encoder", "2").tags
    assert tags["headline.metric"] == "layer_1.test_loss" and tags["headline.greater_is_better"] == "false"


def test_a_version_description_starts_plain_names_the_alias_as_code_and_links_the_run(client, tmp_path):
    reg = register(client, tmp_path, 0.8, name="described")
    version = client.get_model_version("described", reg.model_version)
    run = client.get_run(version.run_id)
    assert version.description == (
        "acc 0.8 (higher is better)\n\n`@champion`: no version holds `@champion` yet\n\n"
        f"Run: [{run.info.run_name}](#/experiments/0/runs/{run.info.run_id}?workflowType=machine_learning)")


def test_weights_already_registered_add_no_version_and_the_registration_says_which(client, tmp_path):
    first = register(client, tmp_path, 0.8, weights="a" * 64, name="same")
    assert first.new_version and client.get_model_version("same", "1").tags["weights_sha256"] == "a" * 64
    same = register(client, tmp_path, 0.9, weights="a" * 64, name="same")  # a better headline, the same weights
    assert (same.new_version, same.model_version, same.alias) == (False, "1", "champion")
    assert same.reason == "weights identical to version 1 (@champion): no new version added"
    assert len(client.search_model_versions("name = 'same'")) == 1
    other = register(client, tmp_path, 0.7, weights="b" * 64, name="same")
    assert other.new_version and (other.model_version, other.alias) == ("2", CHALLENGER)


def test_the_weights_digest_follows_the_weights_not_the_metadata():
    def stack(seed, meta):
        torch.manual_seed(seed)
        return StackedEncoder.from_autoencoders(Scaling.identity(6), [SparseAutoencoder(SAEConfig(6, 3))], meta)

    assert weights_digest(stack(0, {"name": "a"})) == weights_digest(stack(0, {"name": "b"}))
    assert weights_digest(stack(0, {})) != weights_digest(stack(1, {}))
    assert len(weights_digest(stack(0, {}))) == 64


def test_identical_weights_whose_files_are_gone_are_registered_again_and_take_the_alias(client, tmp_path):
    first = register(client, tmp_path, 0.8, weights="c" * 64, name="lost")
    source = client.get_model_version("lost", first.model_version).source
    for file in Path(unquote(urlparse(source).path)).iterdir():  # mlruns/ deleted between two identical runs
        file.unlink()
    again = register(client, tmp_path, 0.8, weights="c" * 64, name="lost")
    assert again.new_version and (again.model_version, again.alias) == ("2", "champion")
    assert f"version 1 holding @champion lost its files ({unquote(urlparse(source).path)})" == again.reason
    assert holder(client, name="lost") == "2"


def test_an_ineligible_run_never_takes_the_alias_and_says_why(client, tmp_path):
    reg = register(client, tmp_path, 1.0, name="degenerate", ineligible="every unit of layer 1 is dead")
    assert (reg.alias, reg.reason) == (CHALLENGER, "not eligible for @champion: every unit of layer 1 is dead")
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("degenerate", "champion")
    assert holder(client, CHALLENGER, name="degenerate") == reg.model_version


# A single-class label column is refused up front now (data loading: InputError, tests/pipeline/app/test_bad_input.py);
# degenerate() still names one class for a result that has one (tests/pipeline/run/test_degenerate.py).
@pytest.mark.parametrize(("setting", "why"), [
    ({"defaults": {"lr": 1e6, "epochs": 3}}, "training diverged"),
], ids=["lr 1e6"])
def test_a_degenerate_run_is_registered_as_challenger_with_the_reason(setting, why, store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"name": "degen", "tracking_uri": store, "data": {"source": "digits", "max_samples": 300},
            "defaults": {"epochs": 1, "batch_size": 64}, "trainer": {"accelerator": "cpu"},
            "layers": [{"hidden": 8}], "finetune": {"epochs": 0}}
    result = pretrain_stack(PipelineConfig.from_dict(base | setting), MlflowTracking())
    reg = result.tracked.registration
    assert reg.alias == CHALLENGER and reg.reason.startswith("not eligible for @champion: ") and why in reg.reason
    tags = MlflowClient(store).get_run(result.tracked.run_id).data.tags
    assert tags["sae.registry"] == f"version {reg.model_version} @{CHALLENGER}" and why in tags["mlflow.note.content"]


def test_a_rerun_after_mlruns_was_deleted_registers_a_version_whose_files_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = PipelineConfig.from_dict({
        "name": "rerun", "tracking_uri": uri, "data": {"source": "digits", "max_samples": 300},
        "defaults": {"epochs": 1, "batch_size": 64}, "trainer": {"accelerator": "cpu"}, "layers": [{"hidden": 8}],
        "finetune": {"epochs": 0}})
    first = pretrain_stack(config, MlflowTracking()).tracked.registration
    shutil.rmtree(tmp_path / "mlruns")
    second = pretrain_stack(config, MlflowTracking()).tracked.registration
    assert (first.model_version, second.model_version, second.alias) == ("1", "2", "champion")
    assert second.new_version and "version 1 holding @champion lost its files" in second.reason
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("rerun-encoder", "champion").version) == "2"
    assert versions.files_gone(client, client.get_model_version("rerun-encoder", "2")) is None


@pytest.mark.parametrize("source", ["mlflow-artifacts:/1/models/m-0d4b/artifacts", "s3://bucket/1/m/artifacts",
                                    "runs:/0d4b/encoder", "dbfs:/databricks/mlflow/1/m"])
def test_files_on_a_server_are_never_taken_for_a_missing_local_folder(source):
    class Version:  # only its source is read for these
        pass

    version = Version()
    version.source = source
    assert versions.files_gone(None, version) is None
