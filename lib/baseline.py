"""The usual one-model training loop of the seed reports, kept as a reference only.

The study trains with `lib.engine.train_rounds`. This loop is what the engine is measured against
(benchmarks/bench_engine.py) and checked against (tests/test_engine.py): one plain model, its own
round of data, mini-batches in the same shuffled order as the engine's round with the same seed.
"""
import time

import numpy as np
import torch

from lib.data import make_round_data, normalize
from lib.engine import OPTIMIZERS, TrainConfig, build_model, make_optimizer, pair_loss, resolve_device, subseed


def train_plain(config: TrainConfig, seed: int, data_dir=None, library_optimizer=False):
    """Train one model on round `seed`; returns (model, history) with history[m] an array (epochs,).

    `library_optimizer`: construct the optimizer with torch's defaults, as the seed reports did,
    instead of the engine's fused / multi-tensor variants (the same arithmetic, slower on CPU).
    """
    config.validate()
    device = resolve_device(config.device)
    rd = make_round_data(seed, config.nb_train, config.nb_val, config.nb_test, data_dir=data_dir)
    train, val, test = (s.to(device) for s in normalize(rd.train, rd.val, rd.test))
    model = build_model(config.model, seed, arch=config.arch, **config.model_options).to(device)
    if library_optimizer:
        optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
    else:
        optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr)
    order_generator = torch.Generator().manual_seed(subseed(seed, "order"))
    history = {m: np.full(config.epochs, np.nan) for m in ("train_loss", "train_acc", "val_acc", "test_acc")}
    start_time = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(config.nb_train, generator=order_generator).to(device)
        loss_sum = correct = 0.0
        for start in range(0, config.nb_train, config.batch_size):
            idx = order[start : start + config.batch_size]
            comparison, digits = model(train.input[idx])
            loss = pair_loss(comparison, digits, train.target[idx], train.classes[idx], config.aux_weight)[0]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (comparison.argmax(1) == train.target[idx]).sum().item()
        history["train_loss"][epoch] = loss_sum / config.nb_train
        history["train_acc"][epoch] = correct / config.nb_train
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            model.eval()
            with torch.no_grad():
                for name, pairs in (("val", val), ("test", test)):
                    if len(pairs):
                        predicted = model(pairs.input)[0].argmax(1)
                        history[f"{name}_acc"][epoch] = (predicted == pairs.target).float().mean().item()
    history["wall_time_s"] = time.perf_counter() - start_time
    return model, history
