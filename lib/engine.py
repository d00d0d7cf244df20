"""The training loop: R independent rounds of one configuration, trained at once.

Round r has its own data (`make_round_data(seed_r)`), its own weight initialisation (the model
built under `seed_r`), its own shuffling and its own dropout masks. The R models are merged into
one "stacked" model whose parameters carry a leading round dimension, and whose layers are
grouped convolutions and batched matrix products. Activations keep the rounds folded into the
batch dimension, sample-major: row `b * R + r` is sample b of round r. In that layout

    (B*R, C, H, W) --view--> (B, R*C, H, W)

is free, and a convolution with `groups=R` is exactly R independent convolutions, so no
activation is ever copied to change layout. Losses are summed over rounds; since every
optimizer here (SGD, Adam, Adadelta, Adagrad, RMSprop) updates each weight from its own gradient
only, the stacked step is the R separate steps. Round r trained together with others is therefore
the computation of round r trained alone: exactly so in float64 (tests/test_engine.py checks it for
every registered model); in float32 the grouped and plain kernels round differently, by about one
float unit per step, which training can amplify, so there it holds within a tolerance only.

The test set is evaluated and recorded, never used to decide anything.
"""
import copy
import math
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lib.data import make_round_data, normalize
from lib.models import create_model, get_model_class

OPTIMIZERS = {
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adadelta": torch.optim.Adadelta,
    "Adagrad": torch.optim.Adagrad,
    "RMSprop": torch.optim.RMSprop,
}


@dataclass
class TrainConfig:
    """Everything that defines one training run (all rounds share it)."""

    model: str = "NetWSAL"  # a name from lib.models.list_models()
    arch: str = ""  # "": the registered class `model`; else a variant's fingerprint (lib.models.model_spec)
    model_options: Dict = field(default_factory=dict)  # keyword arguments of the model class
    optimizer: str = "Adam"  # one of OPTIMIZERS
    lr: float = 1e-3
    batch_size: int = 25  # pairs per step, per round
    epochs: int = 25
    aux_weight: float = 1.0  # weight of the two auxiliary digit losses (auxiliary models only)
    nb_train: int = 1000  # training pairs per round (2 distinct images each)
    nb_val: int = 1000  # validation pairs, from the training pool, disjoint from training pairs
    nb_test: int = 1000  # test pairs, from the test pool (recorded, never used to choose)
    eval_every: int = 1  # evaluate val/test every k epochs; the last epoch always is
    device: str = "auto"  # "auto": CUDA when present, else CPU
    # Beyond the seed reports (all off by default). Each round draws its own transformations.
    shift: float = 0.0  # random translation of each training digit, up to this many pixels
    rotate: float = 0.0  # random rotation of each training digit, up to this many degrees
    scale: float = 0.0  # random scaling of each training digit, by a factor in 1 +- scale
    repair: bool = False  # each epoch, pair the round's 2*nb_train training digits anew (targets from classes)
    label_smoothing: float = 0.0  # of every cross-entropy
    weight_decay: float = 0.0  # decoupled for AdamW, L2 for the others
    lr_schedule: str = "constant"  # "constant" or "cosine" (annealed to 0 over the run, per step)
    ensemble: int = 1  # models per round, trained on the round's data from their own seeds; their
    #                    probabilities are averaged when evaluating
    tta: bool = False  # evaluate on each pair and its 4 one-pixel shifts, averaging probabilities

    def validate(self):
        """Raise ValueError naming the bad field; return self."""
        if not isinstance(self.arch, str):
            raise ValueError(f"arch must be a string, got {self.arch!r}")
        get_model_class(self.model, self.arch)  # raises with the list of registered models
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("lr", "aux_weight", "shift", "rotate", "scale", "label_smoothing", "weight_decay"):
            value, positive = getattr(self, name), name == "lr"
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value < 0 or (positive and value == 0):
                least = "positive" if positive else "non-negative"
                raise ValueError(f"{name} must be a {least} number, got {value!r}")
        for name in ("batch_size", "epochs", "nb_train", "nb_val", "nb_test", "eval_every", "ensemble"):
            value, positive = getattr(self, name), name != "nb_val"
            if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (positive and value == 0):
                least = "positive" if positive else "non-negative"
                raise ValueError(f"{name} must be a {least} integer, got {value!r}")
        if self.scale >= 1 or self.label_smoothing >= 1:
            raise ValueError("scale and label_smoothing must be below 1")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        resolve_device(self.device)
        return self

    def to_dict(self):
        """The fields as a dict; `arch` only for a variant, so a library model's dict (and cache key)
        is what it was before variants existed."""
        values = asdict(self)
        if not self.arch:
            del values["arch"]
        return values

    def key_dict(self):
        """The fields that identify a run: to_dict() less the later options left at their defaults,
        so that adding an option does not change the key of the runs cached before it."""
        defaults = TrainConfig()
        return {k: v for k, v in self.to_dict().items() if k not in _LATER_OPTIONS or v != getattr(defaults, k)}


_LATER_OPTIONS = ("shift", "rotate", "scale", "repair", "label_smoothing", "weight_decay", "lr_schedule", "ensemble",
                  "tta")


# Optimizers with a fused kernel (one call updates every tensor) on CPU and CUDA; the others use
# their multi-tensor ("foreach") implementation. Either way the update of each weight depends on
# its own gradient only, which is what lets stacked rounds train exactly like separate ones.
_FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}


def make_optimizer(name, parameters, lr, weight_decay=0.0):
    kind = {"fused": True} if name in _FUSED else {"foreach": True}
    extra = {"weight_decay": weight_decay} if weight_decay else {}
    return OPTIMIZERS[name](parameters, lr=lr, **kind, **extra)


def resolve_device(device="auto"):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"bad device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available; use device='auto' or 'cpu'")
    return device


def subseed(seed, purpose):
    """Independent seeds for the separate random streams of one round."""
    return seed * 1000 + {"init": 1, "order": 2, "dropout": 3, "augment": 4}[purpose]


def build_model(name, seed, arch="", **options):
    """A registered model (or variant `arch`) initialised from `seed`, without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(subseed(seed, "init"))
        return create_model(name, arch, **options)


# ----------------------------------------------------------------------------- stacked layers
# R independent copies of a layer, input and output in the (B*R, ...) layout.


class Stacked(nn.Module):
    """The weight and bias (None if the layer has none) of R layers, stacked: (R, ...) each."""

    def __init__(self, layers):
        super().__init__()
        self.nb_rounds = len(layers)
        for name in ("weight", "bias"):
            tensors = [getattr(layer, name) for layer in layers]
            stacked = None if tensors[0] is None else torch.stack([t.detach() for t in tensors])
            setattr(self, name, None if stacked is None else nn.Parameter(stacked))


class StackedLinear(Stacked):
    def forward(self, x):  # x: (B*R, ..., in)
        R, (dim_out, dim_in) = self.nb_rounds, self.weight.shape[1:]
        if x.size(-1) != dim_in:
            raise RuntimeError(f"stacked Linear expects {dim_in} input features, got shape {tuple(x.shape)}")
        lead = x.shape[1:-1]
        x = x.reshape(-1, R, lead.numel(), dim_in).transpose(0, 1).reshape(R, -1, dim_in)  # (R, B*M, in)
        if self.bias is None:
            y = torch.bmm(x, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))  # (R, B*M, out)
        y = y.view(R, -1, lead.numel(), dim_out).transpose(0, 1)  # (B, R, M, out)
        return y.reshape(-1, *lead, dim_out)


def to_grouped(x, nb_rounds):
    """(B*R, C, H, W), sample-major -> (B, R*C, H, W) in channels-last memory (one copy)."""
    x = x.unflatten(0, (-1, nb_rounds)).permute(0, 3, 4, 1, 2)  # (B, H, W, R, C), a view
    return x.contiguous().flatten(3).permute(0, 3, 1, 2)  # (B, R*C, H, W)


def from_grouped(x, nb_rounds):
    """(B, R*C, H, W) -> (B*R, C, H, W), sample-major, channels-last memory (one copy)."""
    x = x.permute(0, 2, 3, 1).unflatten(3, (nb_rounds, -1))  # (B, H, W, R, C), a view
    return x.permute(0, 3, 1, 2, 4).contiguous().flatten(0, 1).permute(0, 3, 1, 2)  # (B*R, C, H, W)


class StackedConv2d(Stacked):
    def __init__(self, layers: Sequence[nn.Conv2d]):
        first = layers[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise TypeError("stacking supports Conv2d with numeric zero padding only")
        super().__init__(layers)  # weight (R, out, in/g, k, k), bias (R, out)
        self.groups = first.groups
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation

    def forward_grouped(self, x):  # x: (B, R*C, H, W) -> (B, R*out, H', W')
        # One grouped convolution in channels-last memory: on the CPU, oneDNN's channels-last
        # kernels (and the max-pooling after them) run several times faster than NCHW ones.
        weight = self.weight.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (R*out, C/g, k, k)
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * self.nb_rounds)

    def forward(self, x):  # x: (B*R, C, H, W) -> (B*R, out, H', W')
        return from_grouped(self.forward_grouped(to_grouped(x, self.nb_rounds)), self.nb_rounds)


# Parameter-free modules that act on each channel of each sample separately: they give the same
# result on the grouped (B, R*C, H, W) layout as on (B*R, C, H, W).
CHANNELWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity,
               nn.MaxPool2d, nn.AvgPool2d)


class StackedSequential(nn.Sequential):
    """nn.Sequential whose runs of convolutions, batch norms and channel-wise modules stay in the
    grouped layout from the first convolution to the end of the run: one layout copy in, one out."""

    def __init__(self, *args, nb_rounds=1):
        super().__init__(*args)
        self.nb_rounds = nb_rounds

    def forward(self, x):
        grouped = False
        for module in self:
            if isinstance(module, (StackedConv2d, StackedBatchNorm)) and (grouped or x.dim() == 4):
                if not grouped:
                    x, grouped = to_grouped(x, self.nb_rounds), True
                x = module.forward_grouped(x)
            elif grouped and isinstance(module, CHANNELWISE):
                x = module(x)
            else:
                if grouped:
                    x, grouped = from_grouped(x, self.nb_rounds), False
                x = module(x)
        return from_grouped(x, self.nb_rounds) if grouped else x


class StackedBatchNorm(Stacked):
    """BatchNorm1d/2d: per-round statistics, via one batch_norm over R*C channels."""

    def __init__(self, layers):
        first = layers[0]
        if first.momentum is None or not first.track_running_stats:
            raise TypeError("stacking supports BatchNorm with a momentum and running statistics only")
        super().__init__(layers)  # weight and bias (R, C), or None without affine
        self.eps, self.momentum = first.eps, first.momentum
        self.register_buffer("running_mean", torch.stack([l.running_mean for l in layers]).clone())  # (R, C)
        self.register_buffer("running_var", torch.stack([l.running_var for l in layers]).clone())  # (R, C)
        self.register_buffer("num_batches_tracked", first.num_batches_tracked.clone())

    def forward_grouped(self, x):  # x: (B, R*C, ...)
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = lambda t: None if t is None else t.view(-1)
        return F.batch_norm(x, flat(self.running_mean), flat(self.running_var), flat(self.weight), flat(self.bias),
                            self.training, self.momentum, self.eps)

    def forward(self, x):  # x: (B*R, C, ...)
        y = x.reshape(-1, self.nb_rounds * x.size(1), *x.shape[2:])  # (B, R*C, ...)
        return self.forward_grouped(y).view(x.shape)


class StackedDropout(nn.Module):
    """Dropout / Dropout2d with each round's masks drawn from that round's own generator."""

    def __init__(self, layers, channelwise):
        super().__init__()
        self.nb_rounds = len(layers)
        self.p = layers[0].p
        self.channelwise = channelwise
        self.generators: List[torch.Generator] = []  # set by the engine, one per round

    def forward(self, x):  # x: (B*R, ...)
        if not self.training or self.p == 0:
            return x
        if len(self.generators) != self.nb_rounds:
            raise RuntimeError("StackedDropout needs one generator per round (set by lib.engine)")
        R = self.nb_rounds
        shape = (x.size(0) // R,) + (x.shape[1:2] if self.channelwise else x.shape[1:])  # per round
        keep = torch.stack([torch.rand(shape, generator=g, device=x.device) for g in self.generators], 1)
        keep = (keep >= self.p).to(x.dtype).div_(1 - self.p)  # (B, R, ...)
        keep = keep.view(-1, *shape[1:], *([1] * (x.dim() - len(shape))))  # (B*R, ...)
        return x * keep


def _stacked_layer(layers):
    first = layers[0]
    for kinds, stacked in ((nn.Linear, StackedLinear), (nn.Conv2d, StackedConv2d),
                           ((nn.BatchNorm1d, nn.BatchNorm2d), StackedBatchNorm)):
        if isinstance(first, kinds):
            return stacked(layers)
    if type(first) in (nn.Dropout, nn.Dropout2d):
        return StackedDropout(layers, channelwise=type(first) is nn.Dropout2d)
    if any(True for _ in first.parameters(recurse=False)) or any(True for _ in first.buffers(recurse=False)):
        raise TypeError(f"cannot stack a {type(first).__name__}: the engine stacks Linear, Conv2d, BatchNorm1d/2d, "
                        "Dropout/Dropout2d and parameter-free modules; build the model from those")
    if "dropout" in type(first).__name__.lower():
        raise TypeError(f"cannot stack {type(first).__name__}: use nn.Dropout or nn.Dropout2d")
    return None  # parameter-free: works sample by sample, keep it as it is


def _replace(root, name, module):
    """`root` with `module` in place of its submodule `name`; `module` itself for the empty name."""
    if not name:
        return module
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent), attr, module)
    return root


def stack_models(models: Sequence[nn.Module]) -> nn.Module:
    """Merge R models of one architecture into one model working on the (B*R, ...) layout."""
    stacked = copy.deepcopy(models[0])
    named = [dict(m.named_modules()) for m in models]
    for name, module in list(stacked.named_modules()):
        if not any(True for _ in module.children()):
            if (replacement := _stacked_layer([n[name] for n in named])) is not None:
                stacked = _replace(stacked, name, replacement)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"module {name or type(module).__name__!r} holds its own parameters; the engine stacks "
                            "only Linear, Conv2d and BatchNorm layers: build the model from those")
    for name, module in list(stacked.named_modules()):  # parents first; a replaced parent keeps its children
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            # the same children under the same names (same state dict keys), with the layout-aware forward
            replacement = StackedSequential(OrderedDict(module.named_children()), nb_rounds=len(models))
            replacement.training = module.training
            stacked = _replace(stacked, name, replacement)
    return stacked


def round_state_dict(stacked: nn.Module, r: int):
    """The state dict of round r, loadable into a plain model of the architecture."""
    return {key: value if key.endswith("num_batches_tracked") else value[r].clone()
            for key, value in stacked.state_dict().items()}


# ----------------------------------------------------------------------------- loss and evaluation


def pair_loss(comparison, digits, target, classes, aux_weight, nb_rounds=1, label_smoothing=0.0):
    """Per-round losses (R,): cross-entropy of the comparison + aux_weight x (CE digit 1 + CE digit 2).

    comparison: (B*R, 2), digits: (B*R, 2, 10) or None, target: (B*R,), classes: (B*R, 2).
    Each term is a mean over the round's batch, as in a plain loop with one model.
    """
    R = nb_rounds
    loss = F.cross_entropy(comparison, target, reduction="none", label_smoothing=label_smoothing)
    loss = loss.view(-1, R).mean(0)  # (R,)
    if digits is not None and aux_weight != 0:
        aux = F.cross_entropy(digits.reshape(-1, 10), classes.reshape(-1), reduction="none",
                              label_smoothing=label_smoothing)  # (B*R*2,)
        loss = loss + aux_weight * aux.view(-1, R, 2).mean(0).sum(1)
    return loss


TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (rows, columns) of the test-time views


def shift_pairs(x, dy, dx, background):
    """The pairs x (b, R, 2, 14, 14) moved by dy rows and dx columns, the blank border filled with
    each round's `background` (1, R, 1, 1, 1); x itself when there is nothing to move."""
    if not (dy or dx):
        return x
    view = torch.roll(x, (dy, dx), dims=(3, 4)).clone()
    if dy:
        view[..., 0 if dy > 0 else -1, :] = background[..., 0]
    if dx:
        view[..., 0 if dx > 0 else -1] = background[..., 0]
    return view


def summed_probabilities(model, x, nb_rounds, ensemble, shifts, background):
    """The evaluation wrapper around a stacked model: the probabilities of the pairs x (b, R, 2, 14, 14),
    summed over the `ensemble` members of each round and over the test-time `shifts` of each pair.
    Returns comparison (b, R, 2) and digits (b, R, 2, 10), or 0 for a model that answers no digits."""
    K = ensemble
    comparison = digits = 0
    for dy, dx in shifts:
        view = shift_pairs(x, dy, dx, background).repeat_interleave(K, dim=1).flatten(0, 1)  # (b*R*K, 2, 14, 14)
        c, d = model(view)
        comparison = comparison + torch.softmax(c, 1).view(-1, nb_rounds, K, 2).sum(2)  # (b, R, 2)
        if d is not None:
            digits = digits + torch.softmax(d, 2).view(-1, nb_rounds, K, 2, 10).sum(2)  # (b, R, 2, 10)
    return comparison, digits


@torch.no_grad()
def evaluate(model, x, target, classes, nb_rounds, pairs_per_call=500, ensemble=1, tta=False):
    """Accuracy per round of a (stacked) model on pairs laid out as x: (N, R, 2, 14, 14).

    With `ensemble` = K the model holds K members per round (R*K stacked models, member-major
    within a round) whose probabilities are averaged; with `tta`, over each pair's one-pixel shifts
    too (`summed_probabilities`). Returns (comparison accuracy (R,), digit accuracy (R,) or None).
    About `pairs_per_call` pairs (all models together) go through the model at once: larger calls
    run slower on the CPU (docs/performance.md).
    """
    chunk = max(1, pairs_per_call // (nb_rounds * ensemble))
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    was_training = model.training
    model.eval()
    background = x.amin(dim=(0, 2, 3, 4)).view(1, -1, 1, 1, 1)  # (1, R, 1, 1, 1)
    correct = torch.zeros(nb_rounds, device=x.device)
    digit_correct = None  # stays None for a model that answers no digits
    for start in range(0, x.size(0), chunk):
        comparison, digits = summed_probabilities(model, x[start : start + chunk], nb_rounds, ensemble, shifts,
                                                  background)
        correct += (comparison.argmax(-1) == target[start : start + chunk]).float().sum(0)
        if torch.is_tensor(digits):
            right = (digits.argmax(-1) == classes[start : start + chunk]).float().sum((0, 2))
            digit_correct = right if digit_correct is None else digit_correct + right
    model.train(was_training)
    n = x.size(0)
    return correct / n, (None if digit_correct is None else digit_correct / (2 * n))


# ----------------------------------------------------------------------------- the loop


class BatchTransform:
    """What training does to the pairs before the model sees them, each of the M stacked models
    drawing from its own generator. Nothing by default."""

    def __init__(self, config, generators, background):
        self.config, self.generators, self.background = config, generators, background  # background: (M,)

    def epoch(self, x, target, classes):
        """The epoch's pairs from the training pairs x (N, M, 2, 14, 14), target (N, M), classes (N, M, 2):
        with `repair`, each model's 2N training digits shuffled and paired anew."""
        if not self.config.repair:
            return x, target, classes
        N, M = x.shape[:2]
        perm = torch.stack([torch.randperm(2 * N, generator=g) for g in self.generators]).to(x.device)  # (M, 2N)
        models = torch.arange(M, device=x.device).unsqueeze(1)
        digits = x.transpose(0, 1).reshape(M, 2 * N, *x.shape[3:])[models, perm]  # (M, 2N, 14, 14)
        labels = classes.transpose(0, 1).reshape(M, 2 * N)[models, perm]  # (M, 2N)
        x = digits.view(M, N, 2, *x.shape[3:]).transpose(0, 1).contiguous()  # (N, M, 2, 14, 14)
        classes = labels.view(M, N, 2).transpose(0, 1).contiguous()  # (N, M, 2)
        return x, (classes[..., 0] <= classes[..., 1]).long(), classes

    def batch(self, x):
        """One batch of digits x (b, M, 2, H, W): with shift, rotate or scale, a random affine
        transformation of every digit, the area moved into the image filled with the model's
        background (normalised pixel 0)."""
        config = self.config
        if not (config.shift or config.rotate or config.scale):
            return x
        b, M, _, H, W = x.shape
        u = torch.stack([torch.rand(b, 2, 4, generator=g) for g in self.generators], 1).to(x.device) * 2 - 1
        angle = u[..., 0] * math.radians(config.rotate)  # u: (b, M, 2, 4)
        factor = 1 + u[..., 1] * config.scale
        cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
        tx, ty = u[..., 2] * config.shift * 2 / W, u[..., 3] * config.shift * 2 / H  # pixels -> [-1, 1] units
        theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], -2)  # (b, M, 2, 2, 3)
        images = x.reshape(-1, 1, H, W)
        grid = F.affine_grid(theta.view(-1, 2, 3), list(images.shape), align_corners=False)
        bg = self.background.view(1, M, 1, 1, 1, 1).expand(b, M, 2, 1, 1, 1).reshape(-1, 1, 1, 1)
        out = F.grid_sample(images - bg, grid, align_corners=False, padding_mode="zeros") + bg
        return out.view(x.shape)


EXPLOSION_FACTOR = 1e3  # a mean training loss this many times the chance-level loss is a divergence


def chance_loss(has_digits, aux_weight):
    """The loss of a model that answers uniformly: ln 2 for the comparison, plus aux_weight x 2 ln 10
    for the two digit losses. A healthy round starts near it and goes below it."""
    return math.log(2) + (aux_weight * 2 * math.log(10) if has_digits else 0.0)


def diverging(epoch_loss, reference):
    """(R,) bool: rounds whose mean training loss of the epoch is non-finite or has exploded, i.e.
    is above EXPLOSION_FACTOR x `reference` (the chance-level loss). An explosion is judged against
    chance rather than the first epoch's loss because a rate far too high (Adam, lr=1e3) already
    sends the first epoch's loss to 1e24; such a round keeps finite numbers at test accuracy near
    chance, and without this rule it would count as a trained round."""
    return ~torch.isfinite(epoch_loss) | (epoch_loss > EXPLOSION_FACTOR * reference)


def last_measured(values):
    """(R, epochs) -> (R,): the column of the last epoch where any round has a value (NaN elsewhere,
    e.g. for a diverged round), or the last column if none has."""
    measured = np.flatnonzero(~np.all(np.isnan(values), axis=0))
    return values[:, measured[-1]] if measured.size else values[:, -1]


METRICS = ("train_loss", "train_acc", "val_acc", "test_acc", "val_digit_acc", "test_digit_acc")


@dataclass
class TrainResult:
    """Per-round, per-epoch numbers of one call of `train_rounds`.

    history[m] is an array (R, epochs); val/test entries are NaN at epochs not evaluated, and every
    entry from a round's diverging epoch on is NaN. `diverged_epoch[r]` is that epoch (1-based) or None.
    """

    config: TrainConfig
    seeds: List[int]
    history: Dict[str, np.ndarray]
    diverged_epoch: List[Optional[int]]
    wall_time_s: float
    device: str
    nb_parameters: int
    model: Optional[nn.Module] = None  # the trained stacked model (not serialised)
    cpu_time_s: Optional[float] = None  # CPU time of the training processes (all their threads); None: not measured

    def final(self, metric):
        """Value of `metric` at the last evaluated epoch, per round: (R,)."""
        return last_measured(self.history[metric])

    def round_model(self, r, member=0):
        """A plain model holding round r's trained weights (of its member `member` in an ensemble)."""
        with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: keep the global RNG as it is
            model = create_model(self.config.model, self.config.arch, **self.config.model_options)
        model.load_state_dict(round_state_dict(self.model, r * self.config.ensemble + member))
        return model.eval()

    def to_dict(self):
        """The fields but the model, in their order, as JSON-ready values (NaN as None)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        history = {k: [[None if np.isnan(v) else float(v) for v in row] for row in a] for k, a in self.history.items()}
        return record | {"config": self.config.to_dict(), "seeds": list(self.seeds), "history": history,
                         "diverged_epoch": list(self.diverged_epoch)}


def progress_postfix(history, epoch, nb_diverged=0):
    """The progress bar's numbers after `epoch` (0-based): mean training loss over the live rounds,
    validation accuracy only at an epoch where it was measured, and the count of diverged rounds."""
    postfix = {}
    for name, metric, fmt in (("loss", "train_loss", ".3f"), ("val", "val_acc", ".3f")):
        values = history[metric][:, epoch]
        if np.isfinite(values).any():
            postfix[name] = format(float(np.nanmean(values)), fmt)
    if nb_diverged:
        postfix["diverged"] = nb_diverged
    return postfix


def prepare_rounds(config, seeds, data_dir=None, device="cpu"):
    """Data of all rounds, normalised with each round's training statistics, in (N, R, ...) layout."""
    rounds = [make_round_data(s, config.nb_train, config.nb_val, config.nb_test, data_dir=data_dir) for s in seeds]
    splits = zip(*(normalize(rd.train, rd.val, rd.test) for rd in rounds))  # (train sets, val sets, test sets)
    return tuple(tuple(torch.stack(t, 1).to(device) for t in zip(*(s.tuple() for s in sets))) for sets in splits)


def train_epoch(model, optimizer, scheduler, pairs, order, transform, config):
    """One epoch of steps: the M stacked models each take their own pairs (x (N, M, 2, 14, 14), target
    (N, M), classes (N, M, 2)) in their own `order` (M, N), `config.batch_size` at a time.

    Returns the sums over the epoch of each model's training loss and correct answers (M,), and
    whether the model answers digits."""
    x, target, classes = pairs
    M, N = order.shape
    models = torch.arange(M, device=x.device)
    loss_sum = torch.zeros(M, device=x.device)
    correct = torch.zeros(M, device=x.device)
    for start in range(0, N, config.batch_size):
        idx = order[:, start : start + config.batch_size].t()  # (b, M)
        xb = transform.batch(x[idx, models]).flatten(0, 1)  # (b*M, 2, 14, 14)
        tb = target[idx, models].flatten()  # (b*M,)
        comparison, digits = model(xb)
        losses = pair_loss(comparison, digits, tb, classes[idx, models].flatten(0, 1), config.aux_weight, M,
                           config.label_smoothing)  # (M,)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            loss_sum += losses.detach() * idx.size(0)
            correct += (comparison.argmax(1) == tb).view(-1, M).float().sum(0)
    return loss_sum, correct, digits is not None


def mask_divergence(history, diverged, epoch_loss, reference, epoch):
    """Record `epoch` (0-based) as the diverging epoch of each round not yet flagged whose members'
    mean training losses (R, K) show a divergence in any member (`diverging`); then NaN in every
    metric of each diverged round from its diverging epoch on."""
    for r in diverging(epoch_loss, reference).any(1).nonzero().flatten().tolist():
        if diverged[r] is None:
            diverged[r] = epoch + 1
    for r, d in enumerate(diverged):
        if d is not None:
            for values in history.values():
                values[r, d - 1 :] = np.nan


def record_evaluation(history, epoch, model, splits, nb_rounds, config):
    """Accuracies of each round on each split {name: (x, target, classes)} with pairs, at `epoch`."""
    for name, (x, target, classes) in splits.items():
        if x.size(0) == 0:
            continue
        acc, digit_acc = evaluate(model, x, target, classes, nb_rounds, ensemble=config.ensemble, tta=config.tta)
        history[f"{name}_acc"][:, epoch] = acc.cpu().numpy()
        if digit_acc is not None:
            history[f"{name}_digit_acc"][:, epoch] = digit_acc.cpu().numpy()


def build_stacked_model(config, members, device):
    """One stacked model of the members (one seed each): its weights initialised from them, each
    StackedDropout drawing from its member's dropout generator; and the trainable parameters of
    the K members of one round."""
    models = [build_model(config.model, s, arch=config.arch, **config.model_options) for s in members]
    model = stack_models(models).to(device)
    for m in model.modules():
        if isinstance(m, StackedDropout):
            m.generators = [torch.Generator(device=device).manual_seed(subseed(s, "dropout")) for s in members]
    return model, sum(p.numel() for p in models[0].parameters() if p.requires_grad) * config.ensemble


def make_schedule(config, model):
    """The optimizer of all stacked models, and the cosine schedule per step (None for a constant rate)."""
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay)
    if config.lr_schedule != "cosine":
        return optimizer, None
    total = config.epochs * math.ceil(config.nb_train / config.batch_size)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / total))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def train_rounds(config: TrainConfig, seeds: Sequence[int], data_dir=None, progress=False,
                 on_epoch: Optional[Callable[[int, Dict[str, np.ndarray]], None]] = None,
                 rounds_data=None) -> TrainResult:
    """Train len(seeds) independent rounds of `config` at once.

    Round r uses `seeds[r]` for its data, weights, order and dropout (with `config.ensemble` = K,
    its K members use `seeds[r] + 1_000_003 * m` for all but the data). `progress`: a tqdm bar over
    epochs (True, or a description string). `on_epoch(epoch, history)` is called after each epoch.
    `rounds_data` may hold the output of `prepare_rounds` to skip data preparation.
    """
    config.validate()
    seeds = check_seeds(seeds, "train_rounds")
    R, K, E, N = len(seeds), config.ensemble, config.epochs, config.nb_train
    device = resolve_device(config.device)
    start_time, start_cpu = time.perf_counter(), time.process_time()
    if rounds_data is None:
        rounds_data = prepare_rounds(config, seeds, data_dir, device)
    # given: moved to the training device (no copy when already there, e.g. tensors a caller edits in place)
    train, val, test = (tuple(t.to(device) for t in split) for split in rounds_data)

    # Ensemble members are extra stacked rounds sharing their round's data: member m of round r is
    # model r*K + m, and member 0 uses the round's own seed, so K = 1 is the plain case.
    members = [s + 1_000_003 * m for s in seeds for m in range(K)]
    train = tuple(t.repeat_interleave(K, dim=1) for t in train) if K > 1 else train  # (N, R*K, ...)
    model, nb_parameters = build_stacked_model(config, members, device)
    optimizer, scheduler = make_schedule(config, model)
    order_generators = [torch.Generator().manual_seed(subseed(s, "order")) for s in members]
    transform = BatchTransform(config, [torch.Generator().manual_seed(subseed(s, "augment")) for s in members],
                               background=train[0].amin(dim=(0, 2, 3, 4)))  # a blank pixel, normalised

    history = {m: np.full((R, E), np.nan) for m in METRICS}
    diverged = [None] * R
    bar = tqdm(range(E), desc=progress if isinstance(progress, str) else f"{config.model} x{R}", unit="epoch",
               leave=False, disable=not progress)  # disabled: a plain loop over the epochs
    model.train()
    for epoch in bar:
        order = torch.stack([torch.randperm(N, generator=g) for g in order_generators]).to(device)  # (R*K, N)
        loss_sum, correct, has_digits = train_epoch(model, optimizer, scheduler, transform.epoch(*train), order,
                                                    transform, config)
        epoch_loss = (loss_sum / N).view(R, K)
        history["train_loss"][:, epoch] = epoch_loss.mean(1).cpu().numpy()  # mean over members
        history["train_acc"][:, epoch] = (correct / N).view(R, K).mean(1).cpu().numpy()
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == E:
            record_evaluation(history, epoch, model, {"val": val, "test": test}, R, config)
        mask_divergence(history, diverged, epoch_loss, chance_loss(has_digits, config.aux_weight), epoch)
        bar.set_postfix(progress_postfix(history, epoch, sum(d is not None for d in diverged)))
        if on_epoch is not None:
            on_epoch(epoch + 1, history)

    return TrainResult(config=config, seeds=seeds, history=history, diverged_epoch=diverged,
                       wall_time_s=time.perf_counter() - start_time, device=str(device),
                       nb_parameters=nb_parameters, model=model, cpu_time_s=time.process_time() - start_cpu)


# ----------------------------------------------------- seeds and workers (the worker processes themselves: lib/pool.py)


def check_seeds(seeds, caller):
    """`seeds` as a list of ints; a ValueError naming the argument otherwise."""
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer))]
    if bad:
        raise ValueError(f"{caller}: seeds must be integers, got {bad[0]!r}")
    if not seeds:
        raise ValueError(f"{caller} needs at least one seed")
    return [int(s) for s in seeds]


def split_seeds(seeds, parts):
    """`seeds` cut into `parts` consecutive chunks of near-equal size, the larger first (fewer chunks
    if there are fewer seeds), so that the rounds of one run can be spread over worker processes."""
    seeds = list(seeds)
    parts = max(1, min(int(parts), len(seeds)))
    return [chunk.tolist() for chunk in np.array_split(np.array(seeds, dtype=object), parts)]


def default_workers(device="auto"):
    """Training processes for the CPU: one per core (each single-threaded), capped at 8; one on a GPU.

    On this project's 2-core machine, single-threaded processes each training a share of the rounds
    were faster than one process training all of them with both cores (docs/performance.md)."""
    return 1 if resolve_device(device).type != "cpu" else max(1, min(os.cpu_count() or 1, 8))
