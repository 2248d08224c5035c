"""The ``finetune`` section of the config: how the stack learns from labels, and what chooses how."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.config.layer import _Section


class SemiSettings(_Section):
    """Semi-supervised fine-tuning (method semi): cross-entropy on labeled batches plus two terms on batches of
    every training row, labeled or not, that ask for the same prediction under small changes of the input."""

    steps: Annotated[int, Field(ge=1)] = 1000
    """Optimizer steps (Adam); each draws one labeled and one unlabeled batch, with replacement."""
    lr: Annotated[float, Field(gt=0)] = 0.001
    """Learning rate."""
    batch_labeled: Annotated[int, Field(ge=1)] = 64
    """Labeled rows per step (fewer when there are fewer labeled rows)."""
    batch_unlabeled: Annotated[int, Field(ge=1)] = 128
    """Rows per step for the unlabeled terms, drawn from every training row."""
    consistency: Annotated[float, Field(ge=0)] = 1.0
    """Weight of KL(clean prediction || prediction with consistency_noise of the scaled inputs zeroed)."""
    consistency_noise: Annotated[float, Field(ge=0, lt=1)] = 0.4
    """Fraction of the scaled inputs zeroed for the consistency term."""
    vat: Annotated[float, Field(ge=0)] = 1.0
    """Weight of virtual adversarial training: KL(clean prediction || prediction after the most damaging step)."""
    vat_eps: Annotated[float, Field(gt=0)] = 0.3
    """Length of that step, as a multiple of the median distance from a training row to its nearest neighbour
    (scaled inputs): the same value suits 8x8 and 28x28 digits."""
    ramp: Annotated[float, Field(ge=0, le=1)] = 0.3
    """Fraction of the steps over which both unlabeled weights ramp up from ~0 (0 = full weight from the start)."""
    eval_every: Annotated[int, Field(ge=1)] = 50
    """Steps between validation checks when validation chooses (the best check is kept); logged as one epoch."""


class FinetuneConfig(_Section):
    """Fine-tuning of the whole stack with a softmax on top (only when the data has labels)."""

    method: Literal["semi", "supervised"] = "semi"
    """semi: where some training rows are unlabeled, the semi-supervised recipe (finetune.semi) from a softmax
    whose L2 is chosen by k-fold CV over the labeled rows; with enough labels (validate_from_per_class) it runs
    beside supervised fine-tuning and validation keeps the better one; with every row labeled, supervised
    fine-tuning. supervised: cross-entropy on the labeled rows only, best epoch by validation."""
    epochs: Annotated[int, Field(ge=0)] = 30
    """Epochs of supervised fine-tuning (method supervised, and its run beside semi); 0 = no fine-tuning at all."""
    lr: Annotated[float, Field(gt=0)] = 0.001
    """Learning rate of supervised fine-tuning."""
    batch_size: Annotated[int, Field(ge=1)] = 128
    """Rows per mini-batch of supervised fine-tuning."""
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    """lambda/2 * sum of squared weights of the softmax and the encoders (the classic exercise's 1e-4)."""
    softmax_iterations: Annotated[int, Field(ge=1)] = 400
    """Full-batch L-BFGS iterations fitting the softmax on frozen codes before end-to-end training."""
    validate_from_per_class: Annotated[int, Field(ge=2)] = 200
    """Validation chooses (the probes' C, the fine-tuned run and its checkpoint, the registered encoder) when
    every class has at least this many labeled rows, or when no training row is unlabeled. Below that, with
    unlabeled rows, the validation rows join the labeled training rows and k-fold cross-validation over them
    chooses the regularisation; semi fine-tuning keeps its last step and is registered."""
    semi: SemiSettings = Field(default_factory=SemiSettings)
    """The semi-supervised recipe's settings (method semi)."""
