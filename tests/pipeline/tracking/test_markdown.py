"""Descriptions render in MLflow without GitHub mentions, with tables that keep their columns apart."""

from pipeline.tracking.markdown import alias, external_links, mentions, no_mentions, plain, table


def test_aliases_and_free_text_never_become_github_mentions():
    assert alias("champion") == "`@champion`" and mentions(alias("champion")) == []
    reason = "acc 0.9 does not beat 0.95 of version 1 holding @champion, so @challenger"
    assert mentions(reason) == ["champion", "challenger"]
    assert no_mentions(reason) == "acc 0.9 does not beat 0.95 of version 1 holding `@champion`, so `@challenger`"
    assert no_mentions("already `@champion` here, user@example.com") == "already `@champion` here, user@example.com"


def test_tables_are_fixed_width_text_in_a_code_block_and_first_lines_plain():
    text = table([["layer", "kept"], ["fine-tuned", "epoch 33"]])
    assert text == "```\nlayer       kept\nfine-tuned  epoch 33\n```"
    assert plain("**acc = 0.9** `@champion`") == "acc = 0.9 @champion"


def test_external_links_finds_links_that_leave_the_users_servers():
    text = "[run](#/experiments/1) [flow](http://127.0.0.1:4200/runs/x) see https://github.com/champion"
    assert external_links(text, ["http://127.0.0.1:4200"]) == ["https://github.com/champion"]
