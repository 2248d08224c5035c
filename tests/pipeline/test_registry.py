"""Registry policy: the alias moves only to a version whose headline metric beats the holder's."""

import math

import pytest
from mlflow import MlflowClient

from pipeline.tracking.registry import CHALLENGER, Headline, choose_alias, register_model


def test_headline_beats_respects_the_direction_and_never_lets_nan_win():
    assert Headline("acc", 0.9, True).beats(Headline("acc", 0.8, True))
    assert not Headline("acc", 0.8, True).beats(Headline("acc", 0.8, True))
    assert Headline("loss", 0.1, False).beats(Headline("loss", 0.2, False))
    assert not Headline("loss", 0.3, False).beats(Headline("loss", 0.2, False))
    assert not Headline("acc", math.nan, True).beats(Headline("acc", 0.1, True))
    assert Headline("acc", 0.1, True).beats(Headline("acc", math.nan, True))


def test_headline_survives_a_round_trip_through_version_tags():
    headline = Headline("layer_2.test_loss", 0.123456789, False)
    assert Headline.from_tags(headline.tags()) == headline
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


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may fall back to a ./mlflow.db in the checkout
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def register(client, tmp_path, value, metric="acc"):
    run = client.create_run("0")
    source = tmp_path / f"model-{run.info.run_id}"
    source.mkdir()
    return register_model(client, name="enc", source=source.as_uri(), run_id=run.info.run_id,
                          headline=Headline(metric, value, True), metrics={metric: value, "seconds": 1.5})


def test_versions_carry_metric_and_run_tags_and_the_alias_follows_the_best(client, tmp_path):
    first = register(client, tmp_path, 0.8)
    assert (first.model_version, first.alias, first.model_uri) == ("1", "champion", "models:/enc@champion")
    version = client.get_model_version("enc", "1")
    assert version.tags["metric.acc"] == "0.8" and version.tags["metric.seconds"] == "1.5"
    assert version.tags["run_id"] == version.run_id and "no version holds" in version.tags["registration_reason"]

    worse = register(client, tmp_path, 0.7)
    assert worse.alias == CHALLENGER and str(client.get_model_version_by_alias("enc", "champion").version) == "1"

    better = register(client, tmp_path, 0.85)
    assert better.alias == "champion" and better.version_uri == "models:/enc/3"
    assert str(client.get_model_version_by_alias("enc", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("enc", CHALLENGER).version) == "2"

    other = register(client, tmp_path, 0.99, metric="probe")
    assert other.alias == CHALLENGER and "not comparable" in other.reason
