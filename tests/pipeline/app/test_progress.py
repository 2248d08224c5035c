"""The progress lines: one per epoch of every layer, the last one included, counted from 1."""

import io
import re

from pipeline.app.progress import ProgressPrinter
from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack


def test_every_epoch_prints_once_up_to_epoch_n_of_n():
    config = PipelineConfig.from_dict({
        "name": "progress", "data": {"source": "digits", "max_samples": 300},
        "defaults": {"epochs": 3, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 8}, {"hidden": 4}], "finetune": {"epochs": 0}})
    out = io.StringIO()
    pretrain_stack(config, ProgressPrinter(out))
    epochs = re.findall(r"^(layer \d/2 epoch \d/3) ", out.getvalue(), flags=re.MULTILINE)
    assert epochs == [f"layer {layer}/2 epoch {epoch}/3" for layer in (1, 2) for epoch in (1, 2, 3)]

