"""The semi-supervised terms: KL, masking consistency, the virtual adversarial step, the ramp, the drawn batches,
and the classifier's training step that adds them."""

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sae.batches import DrawnBatches
from sae.classifier import ClassifierModule, StackClassifier
from sae.config import SAEConfig
from sae.scaling import Scaling
from sae.semi import (
    SemiTerms,
    adversarial_direction,
    consistency_loss,
    kl_to,
    mask_inputs,
    ramp_weight,
    unit_rows,
    vat_loss,
)
from sae.stack import StackedEncoder
from sae.train import SizedLoader, quiet_trainer


def _classifier(d_in: int = 10, hidden: int = 8, classes: int = 3, seed: int = 0) -> StackClassifier:
    torch.manual_seed(seed)
    scaling = Scaling("unit", np.zeros(d_in, np.float32), np.full(d_in, 0.5, np.float32), 0.1, True)
    encoder = StackedEncoder(scaling, [(SAEConfig(d_in=d_in, d_hidden=hidden), nn.Linear(d_in, hidden))])
    model = StackClassifier(encoder, hidden, classes).double()
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # confident predictions: the KL terms are far from flat
    return model


def _rows(n: int = 64, d: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.0, 1.6, (n, d)))


def _clean(model: StackClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = model.scaled(x)
    with torch.no_grad():
        return h, F.softmax(model.classify_scaled(h), dim=1)


def test_the_scaled_path_is_the_forward_pass_split_after_the_input_scaler():
    model, x = _classifier(), _rows()
    h = model.scaled(x)
    torch.testing.assert_close(h, model.encoder.scaler(x))
    torch.testing.assert_close(model.classify_scaled(h), model(x))
    torch.testing.assert_close(model.encoder.encode_scaled(h), model.encoder(x))


def test_kl_is_zero_where_predictions_agree_and_positive_where_they_do_not():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    p = F.softmax(logits, dim=1)
    assert float(kl_to(p, logits)) == pytest.approx(0.0, abs=1e-12)
    other = logits.flip(1)
    expected = (p * (p.log() - F.log_softmax(other, 1))).sum(1).mean()
    assert float(kl_to(p, other)) == pytest.approx(float(expected)) and float(expected) > 0.1


def test_masking_zeroes_about_the_asked_fraction_and_nothing_at_zero():
    x = torch.ones(200, 50)
    g = torch.Generator().manual_seed(0)
    assert float((mask_inputs(x, 0.4, g) == 0).float().mean()) == pytest.approx(0.4, abs=0.02)
    assert torch.equal(mask_inputs(x, 0.0, g), x)


def test_consistency_is_zero_without_noise_and_positive_with_it():
    model, x = _classifier(), _rows()
    h, p = _clean(model, x)
    g = torch.Generator().manual_seed(0)
    assert float(consistency_loss(model.classify_scaled, h, p, 0.0, g).detach()) == pytest.approx(0.0, abs=1e-12)
    assert float(consistency_loss(model.classify_scaled, h, p, 0.4, g).detach()) > 1e-3


def test_the_adversarial_direction_has_unit_rows_and_raises_the_kl_far_more_than_random_ones():
    model, x = _classifier(), _rows()
    h, p = _clean(model, x)
    g = torch.Generator().manual_seed(0)
    r = adversarial_direction(model.classify_scaled, h, p, g)
    torch.testing.assert_close(r.norm(dim=1), torch.ones(len(r), dtype=r.dtype))
    radius = 0.3
    adversarial = float(kl_to(p, model.classify_scaled(h + radius * r)))
    random = [float(kl_to(p, model.classify_scaled(h + radius * unit_rows(torch.randn(h.shape, generator=g,
                                                                                      dtype=h.dtype)))))
              for _ in range(5)]
    assert adversarial > 5 * max(random)
    # ...and it is the power iteration's answer: close to the KL's steepest direction at that radius
    d = (1e-3 * r).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_to(p, model.classify_scaled(h + d)), d)
    assert float(F.cosine_similarity(unit_rows(grad), r, dim=1).median()) > 0.9


def test_vat_loss_moves_the_classifier_only_not_its_target_or_step():
    model, x = _classifier(), _rows()
    h, p = _clean(model, x)
    loss = vat_loss(model.classify_scaled, h, p, 0.3, torch.Generator().manual_seed(0))
    loss.backward()
    assert float(loss) > 0 and not p.requires_grad
    assert all(q.grad is not None and float(q.grad.abs().sum()) > 0 for q in model.parameters())


def test_ramp_rises_from_about_zero_to_one_over_its_length_then_stays():
    assert ramp_weight(0.0, 0.3) == pytest.approx(math.exp(-5))
    assert ramp_weight(0.15, 0.3) == pytest.approx(math.exp(-1.25))
    assert ramp_weight(0.3, 0.3) == 1.0 == ramp_weight(0.9, 0.3)
    assert ramp_weight(0.0, 0.0) == 1.0
    terms = SemiTerms(consistency=1, mask=0.4, vat=1, radius=0.3, ramp=0.5, steps=11)
    assert [round(terms.weight(s), 4) for s in (0, 5, 10)] == [round(math.exp(-5), 4), 1.0, 1.0]


def test_drawn_batches_draw_with_replacement_from_each_pool_and_repeat_with_the_seed():
    x, y, pool = torch.arange(6.0).view(6, 1), torch.arange(6), torch.arange(100.0, 140.0).view(40, 1)
    batches = DrawnBatches(x, y, pool, batch_labeled=16, batch_unlabeled=32, steps=5, seed=3)
    first = list(batches)
    assert len(first) == len(batches) == 5
    for xl, yl, xu in first:
        assert xl.shape == (16, 1) and xu.shape == (32, 1)
        assert torch.equal(xl[:, 0].long(), yl) and bool((xu >= 100).all())
    assert len(torch.unique(first[0][0])) < 16  # with replacement: 16 draws from 6 rows repeat
    again = list(DrawnBatches(x, y, pool, batch_labeled=16, batch_unlabeled=32, steps=5, seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(next(iter(batches))[2], first[0][2])  # the next pass draws anew
    with pytest.raises(ValueError, match="positive"):
        DrawnBatches(x, y, pool, batch_labeled=0, batch_unlabeled=1, steps=1)


def _fit(semi: SemiTerms | None, keep: str = "last", epochs: int = 3, seed: int = 0) -> ClassifierModule:
    model = _classifier().float()
    x, y = _rows(40).float(), torch.arange(40) % 3
    module = ClassifierModule(model, lr=0.01, weight_decay=1e-4, keep=keep, semi=semi, seed=seed)
    batches = DrawnBatches(x[:9], y[:9], x, batch_labeled=8, batch_unlabeled=16, steps=4, seed=seed)
    pl.seed_everything(seed, verbose=False)
    quiet_trainer(epochs, n_batches=1, accelerator="cpu").fit(module, train_dataloaders=SizedLoader(batches, group=4))
    return module


def test_the_training_step_adds_both_ramped_terms_and_keeps_the_last_epoch():
    semi = SemiTerms(consistency=1.0, mask=0.4, vat=1.0, radius=0.2, ramp=0.5, steps=12)
    module = _fit(semi)
    assert [row["epoch"] for row in module.history] == [0.0, 1.0, 2.0] and module.best_epoch == 2
    assert all(row["consistency"] > 0 and row["vat"] > 0 for row in module.history)
    assert module.history[0]["vat"] < module.history[-1]["vat"]  # the ramp: small weights at first
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(module.best_state[name], value)  # kept = the weights after the last step
    plain = _fit(None)
    assert "consistency" not in plain.history[0]


def test_semi_training_is_reproducible_with_its_seed():
    semi = SemiTerms(consistency=1.0, mask=0.4, vat=1.0, radius=0.2, ramp=0.3, steps=12)
    a, b, c = _fit(semi, seed=0), _fit(semi, seed=0), _fit(semi, seed=1)
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    assert not all(torch.equal(a.best_state[k], c.best_state[k]) for k in a.best_state)


def test_a_diverged_run_that_keeps_its_last_epoch_keeps_the_last_finite_one_or_the_start():
    model = _classifier().float()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.full((12, 10), float("nan"))
    module = ClassifierModule(model, lr=0.01, weight_decay=1e-4, keep="last")
    batches = DrawnBatches(x, torch.arange(12) % 3, x, batch_labeled=4, batch_unlabeled=4, steps=2)
    quiet_trainer(3, n_batches=1, accelerator="cpu").fit(module, train_dataloaders=SizedLoader(batches, group=2))
    assert len(module.history) == 1 and module.best_epoch is None  # stopped after the first (NaN) epoch
    assert all(torch.equal(module.best_state[k], start[k]) for k in start)
