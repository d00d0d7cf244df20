"""Building blocks and the registry of named architectures.

Every model takes a batch of digit pairs `x` of shape (N, 2, 14, 14) and answers the same way:

    comparison_logits, digit_logits = model(x)   # (N, 2), (N, 2, 10) or None

`comparison_logits[:, 1]` scores "first digit <= second"; `digit_logits[:, k]` are the class logits
of the k-th digit when the model is trained with an auxiliary loss, else None. The loss, not the
model, decides what to do with them (see `lib.engine.pair_loss`), so no caller branches on the type.

Models are plain `nn.Module`s. The engine trains many copies at once by swapping their layers for
stacked versions (`lib.engine.stack_models`); for that, a forward pass may only treat the batch
dimension sample by sample, or split and concatenate it in whole blocks (`torch.cat(.., dim=0)`,
`chunk(.., dim=0)`), as the siamese helper `both_digits` does.
"""
from typing import Callable, Dict

import torch
from torch import nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(cls):
    """Class decorator: register an architecture under its class name."""
    if cls.__name__ in _REGISTRY:
        raise ValueError(f"model {cls.__name__!r} is registered twice")
    _REGISTRY[cls.__name__] = cls
    return cls


def list_models():
    """Names of every registered architecture, in registration order."""
    return list(_REGISTRY)


def get_model_class(name):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_REGISTRY)}") from None


def create_model(name, **options):
    """Instantiate a registered architecture, e.g. `create_model("NetWSAL")`."""
    return get_model_class(name)(**options)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def both_digits(branch, x):
    """Run one shared `branch` on both digits of each pair, as a single batch.

    x: (N, 2, 14, 14) -> branch output for every digit, reshaped to (N, 2, *out).
    The two digits are concatenated as two blocks of the batch (not interleaved) so that the
    engine's stacked layers see whole blocks.
    """
    n = x.size(0)
    out = branch(torch.cat((x[:, 0:1], x[:, 1:2]), dim=0))  # (2N, *out)
    return torch.stack(out.split(n, dim=0), dim=1)  # (N, 2, *out)


def each_digit(branches, x):
    """Run separate branches on the first and the second digit: -> (N, 2, *out)."""
    return torch.stack([branch(x[:, k : k + 1]) for k, branch in enumerate(branches)], dim=1)


# ---------------------------------------------------------------------------------------------
# Seed report 002: NetBase, NetWS, NetAL, NetWSAL
# ---------------------------------------------------------------------------------------------


class DigitBranch002(nn.Sequential):
    """One branch of seed report 002: 1x14x14 image -> 10 values (digit logits when auxiliary).

    conv 32@3x3 -> max-pool 2 -> ReLU -> conv 64@3x3 -> max-pool 2 -> ReLU -> FC 128 -> ReLU -> FC 10.
    The report applies ReLU after each pooling layer and each hidden FC layer.
    """

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 32, 3),  # (N, 32, 12, 12)
            nn.MaxPool2d(2),  # (N, 32, 6, 6)
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),  # (N, 64, 4, 4)
            nn.MaxPool2d(2),  # (N, 64, 2, 2)
            nn.ReLU(),
            nn.Flatten(),  # (N, 256)
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 10),  # (N, 10)
        )


class Net002(nn.Module):
    """The common skeleton of the four 002 architectures.

    Two branches (shared or not) map each digit to 10 values; ReLU of both, concatenated in pair
    order (N, 20), go through FC 128 -> ReLU -> FC 2. With `auxiliary`, the 10 pre-ReLU values of
    each branch are also returned as digit logits for the auxiliary cross-entropy losses.
    """

    weight_sharing = False
    auxiliary = False

    def __init__(self):
        super().__init__()
        if self.weight_sharing:
            self.branch = DigitBranch002()
        else:
            self.branches = nn.ModuleList([DigitBranch002(), DigitBranch002()])
        self.head = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, x):  # x: (N, 2, 14, 14)
        if self.weight_sharing:
            digits = both_digits(self.branch, x)  # (N, 2, 10)
        else:
            digits = each_digit(self.branches, x)  # (N, 2, 10)
        comparison = self.head(torch.relu(digits).flatten(1))  # (N, 2)
        return comparison, (digits if self.auxiliary else None)


@register_model
class NetBase(Net002):
    """002: two separate branches, main loss only."""


@register_model
class NetWS(Net002):
    """002: the two branches share their weights (a siamese network), main loss only."""

    weight_sharing = True


@register_model
class NetAL(Net002):
    """002: separate branches whose 10 outputs are digit logits with auxiliary losses."""

    auxiliary = True


@register_model
class NetWSAL(Net002):
    """002: weight sharing and auxiliary losses together."""

    weight_sharing = True
    auxiliary = True
