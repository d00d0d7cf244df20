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
import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
_VARIANTS: dict[tuple[str, str], type[nn.Module]] = {}  # (name, arch) -> a class defined elsewhere
PUBLISHED = Path(__file__).resolve().parent.parent / "report" / "published.json"  # the seed reports' numbers
# {model name: {"metric", "mean", "pm", "nb_runs"}}: what the seed reports published (never ours)
_PUBLISHED_NUMBERS = {m["model"]: {"metric": block["metric"], "mean": m["mean"], "pm": m["pm"],
                                   "nb_runs": block["nb_rounds"]}
                      for block in json.loads(PUBLISHED.read_text())["reports"].values() for m in block["models"]}

# Every architecture of this file declares, as class attributes:
#   report           the seed report it comes from ("000", "002", "003", "004"), None beyond them
#   weight_sharing   whether the two digits go through the same weights
#   auxiliary        whether it answers digit logits, trained with the auxiliary digit losses
# and seed-report architectures `report_defaults` too: what their report says about training
# (optimizer, lr, batch_size, epochs, aux_weight), only the keys the report states. Registering
# sets `published`: the numbers its report published for it, or None.


def register_model(cls):
    """Class decorator: register an architecture under its class name, with its published numbers.
    A name is registered once; a class defined elsewhere under a registered name (the notebook's)
    is told apart by `model_spec`."""
    if cls.__name__ in _REGISTRY:
        raise ValueError(f"model {cls.__name__!r} is registered twice")
    cls.published = _PUBLISHED_NUMBERS.get(cls.__name__)
    _REGISTRY[cls.__name__] = cls
    return cls


def register_variant(base, name, doc, **switches):
    """Register the architecture `name`: the class `base` with the class attributes `switches` set."""
    return register_model(type(name, (base,), {"__doc__": doc, "__module__": __name__, **switches}))


def list_models():
    """Names of every registered architecture, in registration order."""
    return list(_REGISTRY)


def get_model_class(name, arch=""):
    """The registered class `name`, or with `arch`, the variant of that name registered by `model_spec`."""
    if arch and (name, arch) not in _VARIANTS:
        raise ValueError(f"unknown architecture {arch!r} of model {name!r}: pass its class to the study "
                         "(lib.models.model_spec) in this process first")
    if not arch and name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_REGISTRY)}")
    return _VARIANTS[name, arch] if arch else _REGISTRY[name]


def create_model(name, arch="", **options):
    """Instantiate a registered architecture, e.g. `create_model("NetWSAL")`."""
    return get_model_class(name, arch)(**options)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_report(name):
    """The seed report a registered architecture comes from (None beyond them)."""
    return get_model_class(name).report


def count_parameters_of(name, **options):
    """Trainable parameters of a registered architecture, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_parameters(create_model(name, **options))


def architecture_fingerprint(cls, seed=0):
    """12 hex digits of sha256 over what a model class (built with its default arguments) computes:
    its parameter and buffer names and shapes, its initial weights under `seed`, and its outputs on
    one random batch, in float64 rounded to 1e-6 (stable across machines), in eval and train mode."""
    digest = hashlib.sha256()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
        for key, value in model.state_dict().items():
            digest.update(f"{key} {tuple(value.shape)};".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        model = model.double()
        x = torch.randn(8, 2, 14, 14, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for training in (False, True):
            torch.manual_seed(seed)  # the same dropout masks for every class
            with torch.no_grad():
                outputs = model.train(training)(x)
            for out in outputs:
                digest.update(b"None" if out is None else (np.round(out.numpy(), 6) + 0.0).tobytes())
    return digest.hexdigest()[:12]


@functools.cache
def _registered_fingerprint(cls):
    """`architecture_fingerprint` of a library class, computed once per process (it never changes)."""
    return architecture_fingerprint(cls)


def model_spec(model):
    """(name, arch) of a model given by its registered name or by its class.

    A class that computes what the registered class of its name computes (`architecture_fingerprint`)
    is that model, arch "": its runs are the library's (same cache keys, and workers build the
    library's class). Any other class is a variant, arch = its fingerprint, registered here so that
    `get_model_class(name, arch)` builds it; its runs get their own cache keys, and `lib.pool` ships
    it to the worker processes."""
    if isinstance(model, str):
        get_model_class(model)
        return model, ""
    name = model.__name__
    library = _REGISTRY.get(name)
    if library is model:
        return name, ""
    arch = architecture_fingerprint(model)
    if library is not None and arch == _registered_fingerprint(library):
        return name, ""
    _VARIANTS[name, arch] = model
    return name, arch


def variants():
    """The classes registered by `model_spec` in this process, {(name, arch): class}."""
    return dict(_VARIANTS)


def add_variants(classes):
    """Register the classes of another process's `variants()` (a worker's jobs may train them)."""
    _VARIANTS.update(classes)


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


def two_conv_stages(dim_in, dim_conv1, dim_conv2):
    """Two rounds of 3x3 convolution, 2x2 max-pooling and ReLU: (N, dim_in, 14, 14) -> (N, 4 * dim_conv2),
    the start of the 002 branch and of the 004 models."""
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_conv1, 3),  # (N, dim_conv1, 12, 12)
        nn.MaxPool2d(2),  # (N, dim_conv1, 6, 6)
        nn.ReLU(),
        nn.Conv2d(dim_conv1, dim_conv2, 3),  # (N, dim_conv2, 4, 4)
        nn.MaxPool2d(2),  # (N, dim_conv2, 2, 2)
        nn.ReLU(),
        nn.Flatten(),  # (N, 4 * dim_conv2)
    )


# ---------------------------------------------------------------------------------------------
# Seed report 002: NetBase, NetWS, NetAL, NetWSAL
# ---------------------------------------------------------------------------------------------


def digit_branch_002():
    """One branch of seed report 002: 1x14x14 image -> 10 values (digit logits when auxiliary).
    The report applies ReLU after each pooling layer and each hidden FC layer."""
    return nn.Sequential(*two_conv_stages(1, 32, 64), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))  # (N, 10)


class Net002(nn.Module):
    """The common skeleton of the four 002 architectures.

    Two branches (shared or not) map each digit to 10 values; ReLU of both, concatenated in pair
    order (N, 20), go through FC 128 -> ReLU -> FC 2. With `auxiliary`, the 10 pre-ReLU values of
    each branch are also returned as digit logits for the auxiliary cross-entropy losses.
    """

    report = "002"
    weight_sharing = False
    auxiliary = False

    def __init__(self):
        super().__init__()
        if self.weight_sharing:
            self.branch = digit_branch_002()
        else:
            self.branches = nn.ModuleList([digit_branch_002(), digit_branch_002()])
        self.head = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, x):  # x: (N, 2, 14, 14)
        if self.weight_sharing:
            digits = both_digits(self.branch, x)  # (N, 2, 10)
        else:
            digits = each_digit(self.branches, x)  # (N, 2, 10)
        comparison = self.head(torch.relu(digits).flatten(1))  # (N, 2)
        return comparison, (digits if self.auxiliary else None)


NetBase = register_variant(Net002, "NetBase", "002: two separate branches, main loss only.")
NetWS = register_variant(Net002, "NetWS", "002: one branch shared by both digits (siamese), main loss only.",
                         weight_sharing=True)
NetAL = register_variant(Net002, "NetAL", "002: separate branches, their outputs digit logits with auxiliary losses.",
                         auxiliary=True)
NetWSAL = register_variant(Net002, "NetWSAL", "002: weight sharing and auxiliary losses together.",
                           weight_sharing=True, auxiliary=True)


# ---------------------------------------------------------------------------------------------
# Seed report 000 (001 is its plain-text copy): ConvNetBase, ConvNetBaseAux, ConvNetSep, ConvNetSepAux
# ---------------------------------------------------------------------------------------------
#
# In this report 'Base' means SHARED weights for the two digits and 'Sep' separate weights.
# Widths keep the report's letters: c = convolutional features, f = hidden units of the target
# (comparison) module, h = hidden units of the class (digit) module.


def binary_logit_pair(z):
    """One binary logit z (N, 1) as comparison logits [0, z] (N, 2).

    softmax([0, z])[1] = sigmoid(z), so cross-entropy on [0, z] with target t equals
    binary cross-entropy with logits on z and t, exactly: a model trained with BCE on one logit
    keeps the common answer and the engine's common loss.
    """
    return torch.cat((torch.zeros_like(z), z), dim=1)  # (N, 2)


def conv_branch_000(c, dropout, batch_norm):
    """Feature extractor of one digit: 1x14x14 -> c features (14 -> 12 -> 7 -> 5 -> 3 -> 1 -> 1). The report
    puts a dropout layer after the convolutional module and optionally a batch norm after every convolution."""
    dims = (1, c // 2, c, c)
    layers = []
    for dim_in, dim_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Conv2d(dim_in, dim_out, 3), nn.ReLU()]
        if batch_norm:
            layers.append(nn.BatchNorm2d(dim_out))
        layers.append(nn.MaxPool2d(2, padding=1))
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout))  # (N, c)


class ConvModule(nn.Module):
    """000: the convolutional module, one branch shared by both digits or one per digit ('Sep'):
    (N, 2, 14, 14) -> (N, 2, c)."""

    def __init__(self, c, dropout, batch_norm, shared):
        super().__init__()
        if shared:
            self.branch = conv_branch_000(c, dropout, batch_norm)
        else:
            self.branches = nn.ModuleList([conv_branch_000(c, dropout, batch_norm) for _ in range(2)])

    def forward(self, x):
        return both_digits(self.branch, x) if "branch" in self._modules else each_digit(self.branches, x)


class TargetPrediction(nn.Module):
    """000: comparison logit from both digits' features: Linear c -> f on each digit (one layer shared
    by the two digits, or one per digit), ReLU, the two f-vectors concatenated in pair order, Linear 2f -> 1."""

    def __init__(self, c, f, shared):
        super().__init__()
        self.fc1 = nn.Linear(c, f) if shared else nn.ModuleList([nn.Linear(c, f) for _ in range(2)])
        self.fc2 = nn.Linear(2 * f, 1)

    def forward(self, features):  # features: (N, 2, c)
        separate = isinstance(self.fc1, nn.ModuleList)
        hidden = each_digit(self.fc1, features) if separate else self.fc1(features)  # (N, 2, [1,] f)
        return self.fc2(torch.relu(hidden).flatten(1))  # (N, 1)


class ConvNet000(nn.Module):
    """The common skeleton of the four 000 architectures.

    A convolutional module (shared or separate branches) gives c features per digit; a target module
    maps both to one logit z, trained with binary cross-entropy in the report: the model answers
    [0, z] (`binary_logit_pair`), for which the engine's cross-entropy equals BCE-with-logits exactly.
    Auxiliary variants add a class module on the same features (`ConvNet000Aux`).

    The report's figures, which gave the layers, did not survive in its text. Kernel sizes, pooling,
    the c/2, c, c channel progression, batch norm after each convolution's ReLU and dropout on the c
    features (`conv_branch_000`), and the target and class modules' layers, follow the authors' public
    `modules.py` (seen in a code index; repository not identified). Defaults c=64, f=32, h=64,
    dropout=0.25, batch_norm=False are ours: the report tuned these values but published none.
    """

    report = "000"
    weight_sharing = True
    auxiliary = False
    report_defaults = {}  # the report tuned its settings on 10-epoch runs but published none of them

    def __init__(self, c=64, f=32, dropout=0.25, batch_norm=False):
        super().__init__()
        if c < 2 or c % 2:
            raise ValueError(f"c must be an even number >= 2 (the first convolution has c/2 channels), got {c!r}")
        self.conv = ConvModule(c, dropout, batch_norm, self.weight_sharing)
        self.target = TargetPrediction(c, f, self.weight_sharing)
        self.classes = None

    def forward(self, x):  # x: (N, 2, 14, 14)
        features = self.conv(x)  # (N, 2, c)
        comparison = binary_logit_pair(self.target(features))  # (N, 2)
        return comparison, (None if self.classes is None else self.classes(features))  # (N, 2, 10)


class ConvNet000Aux(ConvNet000):
    """000 with the auxiliary digit loss: the ClassPrediction module, Linear c -> h, ReLU, Linear h -> 10,
    answering digit logits (the engine's cross-entropy applies the softmax). The report lists a single
    ClassPrediction module (no 'Sep' version), so the Sep network too applies the same one to both digits."""

    auxiliary = True

    def __init__(self, c=64, f=32, h=64, dropout=0.25, batch_norm=False):
        super().__init__(c=c, f=f, dropout=dropout, batch_norm=batch_norm)
        self.classes = nn.Sequential(nn.Linear(c, h), nn.ReLU(), nn.Linear(h, 10))  # (N, 2, c) -> (N, 2, 10)


ConvNetBase = register_variant(ConvNet000, "ConvNetBase",
                               "000: shared conv and target modules ('Base' = shared weights), BCE main loss only.")
ConvNetBaseAux = register_variant(ConvNet000Aux, "ConvNetBaseAux",
                                  "000: shared weights plus the auxiliary digit cross-entropy.")
ConvNetSep = register_variant(ConvNet000, "ConvNetSep",
                              "000: separate conv branches and target first layers ('Sep'), BCE main loss only.",
                              weight_sharing=False)
ConvNetSepAux = register_variant(ConvNet000Aux, "ConvNetSepAux",
                                 "000: separate weights plus the auxiliary digit cross-entropy (one class module).",
                                 weight_sharing=False)


# ---------------------------------------------------------------------------------------------
# Seed report 003: BasicNet1, AuxNet1, AuxNet2, AuxNet3
# ---------------------------------------------------------------------------------------------
#
# The report searched every combination of widths in SEARCH_WIDTHS_003 giving between 65,000 and
# 75,000 trainable parameters (`architecture_search_space_003`). Its text gives layer counts, 0.5
# dropout on all linear layers and cross-entropy losses; the geometry below follows the authors'
# public code (seen in a code index; repository not identified), except AuxNet3, see there:
#   convolutions  3x3 -> max-pool 2 -> 3x3 (padding 1) -> max-pool 2 [-> 2x2 (padding 1) -> max-pool 3],
#                 ReLU after each convolution: 14 -> 12 -> 6 -> 6 -> 3 [-> 4 -> 1]
#   linear layers each preceded by dropout ("dropout on all linear layers"), ReLU between them;
#                 one hidden width `dim_hidden` for every hidden linear layer of a model.

SEARCH_WIDTHS_003 = (16, 32, 64, 128, 256, 512)
PARAMETER_BAND_003 = (65_000, 75_000)  # inclusive


def conv_trunk_003(dim_in, dims):
    """2 or 3 convolutions of widths `dims` on a (N, dim_in, 14, 14) input -> flat features."""
    specs = ((3, 0, 2), (3, 1, 2), (2, 1, 3))  # (kernel, padding, pooling) of each convolution
    layers = []
    for (kernel, padding, pool), dim_out in zip(specs, dims):
        layers += [nn.Conv2d(dim_in, dim_out, kernel, padding=padding), nn.ReLU(), nn.MaxPool2d(pool)]
        dim_in = dim_out
    layers.append(nn.Flatten())  # (N, dims[-1]) after 3 convolutions, (N, 9 * dims[-1]) after 2
    return nn.Sequential(*layers)


def mlp_003(dim_in, dims_hidden, dim_out, dropout):
    """Linear layers, each preceded by dropout, with ReLU between them."""
    layers = []
    for dim in (*dims_hidden, dim_out):
        layers += [nn.Dropout(dropout), nn.Linear(dim_in, dim), nn.ReLU()]
        dim_in = dim
    return nn.Sequential(*layers[:-1])  # no ReLU on the logits


class Net003(nn.Module):
    """Common attributes of the 003 architectures, and the forward pass of AuxNet2 and AuxNet3.

    `width_options` names the constructor options the report's width search varies. The report's
    winning widths are in a figure that did not survive, so the defaults are those `default_widths_003`
    picks from the search space. `dropout` is 0.5 as in the report.
    """

    report = "003"
    weight_sharing = True
    auxiliary = True
    # the width search's settings; aux_weight 1: the loss sums the comparison and the two digit cross-entropies
    report_defaults = {"optimizer": "Adam", "lr": 0.005, "batch_size": 100, "aux_weight": 1.0}
    width_options = ("dim_conv1", "dim_conv2", "dim_conv3", "dim_hidden")

    def forward(self, x):  # a shared trunk, then a digit head and a comparison head
        features = both_digits(self.features, x)  # (N, 2, dim_features)
        return self.classifier(features.flatten(1)), self.digit_head(features)


@register_model
class BasicNet1(Net003):
    """003: the two digits as the 2 channels of one CNN (3 convolutions, 2 linear layers), main loss only."""

    weight_sharing = False
    auxiliary = False
    report_defaults = {"optimizer": "Adam", "lr": 0.005, "batch_size": 100}

    def __init__(self, dim_conv1=32, dim_conv2=128, dim_conv3=64, dim_hidden=16, dropout=0.5):
        super().__init__()
        self.features = conv_trunk_003(2, (dim_conv1, dim_conv2, dim_conv3))
        self.classifier = mlp_003(dim_conv3, (dim_hidden,), 2, dropout)

    def forward(self, x):  # x: (N, 2, 14, 14)
        return self.classifier(self.features(x)), None


@register_model
class AuxNet1(Net003):
    """003: weight sharing and auxiliary losses. One CNN + MLP, shared by the two digits, predicts the
    10 digit logits of each; the two 10-vectors, concatenated in pair order, go through a binary
    classifier MLP."""

    def __init__(self, dim_conv1=128, dim_conv2=32, dim_conv3=64, dim_hidden=256, dropout=0.5):
        super().__init__()
        self.features = conv_trunk_003(1, (dim_conv1, dim_conv2, dim_conv3))
        self.digit_head = mlp_003(dim_conv3, (dim_hidden,), 10, dropout)
        self.classifier = mlp_003(20, (dim_hidden,), 2, dropout)

    def forward(self, x):  # x: (N, 2, 14, 14)
        digits = self.digit_head(both_digits(self.features, x))  # (N, 2, 10)
        return self.classifier(digits.flatten(1)), digits


@register_model
class AuxNet2(Net003):
    """003: a shared convolutional trunk (3 convolutions) whose features branch into a digit head
    (each digit alone) and a comparison head (both digits' features concatenated), 2 linear layers each."""

    def __init__(self, dim_conv1=128, dim_conv2=32, dim_conv3=64, dim_hidden=128, dropout=0.5):
        super().__init__()
        self.features = conv_trunk_003(1, (dim_conv1, dim_conv2, dim_conv3))
        self.digit_head = mlp_003(dim_conv3, (dim_hidden,), 10, dropout)
        self.classifier = mlp_003(2 * dim_conv3, (dim_hidden,), 2, dropout)


@register_model
class AuxNet3(Net003):
    """003: as AuxNet2 with 2 convolutions and 3 linear layers: the shared trunk stops after the
    second convolution and pooling (dim_conv2 x 3 x 3 features per digit) and each head has two
    hidden layers of dim_hidden units. The report gives only the layer counts (the one public version
    of the code we saw does not match them); putting the extra linear layer in the heads, rather
    than in the shared trunk, is our reading of "similar to AuxNet2"."""

    width_options = ("dim_conv1", "dim_conv2", "dim_hidden")

    def __init__(self, dim_conv1=16, dim_conv2=32, dim_hidden=64, dropout=0.5):
        super().__init__()
        self.features = conv_trunk_003(1, (dim_conv1, dim_conv2))
        dim_features = 9 * dim_conv2
        self.digit_head = mlp_003(dim_features, (dim_hidden, dim_hidden), 10, dropout)
        self.classifier = mlp_003(2 * dim_features, (dim_hidden, dim_hidden), 2, dropout)


def architecture_search_space_003(model_name):
    """Every width combination of the 003 search: options dicts over the model's `width_options`,
    each width in SEARCH_WIDTHS_003, with 65,000-75,000 trainable parameters (inclusive), in
    lexicographic order of the widths."""
    if model_report(model_name) != "003":
        raise ValueError(f"{model_name!r} is not a 003 architecture")
    names = get_model_class(model_name).width_options
    return [dict(zip(names, widths)) for widths in _search_space_003(model_name)]


@functools.lru_cache(maxsize=None)
def _search_space_003(model_name, prefix=()):
    """The in-band width tuples starting with `prefix`, in lexicographic order, computed once per process.

    The parameter count grows with every width, so once a partial choice of widths, completed with
    the smallest width, exceeds the band, larger values of its last width are not tried.
    """
    names = get_model_class(model_name).width_options
    low, high = PARAMETER_BAND_003
    found = ()
    for width in SEARCH_WIDTHS_003:
        widths = prefix + (width,)
        padded = widths + (SEARCH_WIDTHS_003[0],) * (len(names) - len(widths))
        count = count_parameters_of(model_name, **dict(zip(names, padded)))
        if count > high:
            break
        if len(widths) < len(names):
            found += _search_space_003(model_name, widths)
        elif count >= low:
            found += (widths,)
    return found


# Convolution widths the report names among its best results ("32-128-64, 128-32-64").
BEST_CONV_WIDTHS_003 = ((32, 128, 64), (128, 32, 64))


def default_widths_003(model_name):
    """The rule behind the 003 constructors' default widths (tests check they agree).

    Among `architecture_search_space_003(model_name)`, keep the combinations whose convolution
    widths are one of BEST_CONV_WIDTHS_003 when there are any (AuxNet3, with 2 convolutions, has
    none), and pick the one whose parameter count is closest to 70,000, the middle of the band.
    """
    space = architecture_search_space_003(model_name)
    conv_names = [n for n in get_model_class(model_name).width_options if n.startswith("dim_conv")]
    named = [o for o in space if tuple(o[n] for n in conv_names) in BEST_CONV_WIDTHS_003]
    return min(named or space, key=lambda o: abs(count_parameters_of(model_name, **o) - 70_000))


# ---------------------------------------------------------------------------------------------
# Seed report 004: SimpleCNN, WSharingModel, AuxModel
# ---------------------------------------------------------------------------------------------
#
# The report (a README) describes the three models in one sentence each and gives the training
# defaults: 50 epochs, learning rate 0.1. It names no optimizer; 0.1 is a plain-SGD learning rate
# (the course's default optimizer; far too large a step for Adam), and the authors' public code
# (danieljsmarda/DeepLearning2019, Project1/test.py) indeed uses SGD. Their widths (64 and 128
# channels of 3x3 convolutions, each followed by 2x2 max-pooling then ReLU; 128 or 100 hidden units)
# come from that code too. That script also used mini-batches of 100 and an auxiliary weight of 0.5,
# which the report does not state: they are not in `report_defaults`.


class Net004(nn.Module):
    """Common attributes of the 004 architectures (widths: the authors' code, see above)."""

    report = "004"
    weight_sharing = True
    auxiliary = False
    report_defaults = {"optimizer": "SGD", "lr": 0.1, "epochs": 50}  # optimizer: implied, see above


@register_model
class SimpleCNN(Net004):
    """004: the two digits as the 2 channels of one CNN, two rounds of convolution and max-pooling,
    then the fully connected classifier (one hidden layer of dim_hidden units, as in the authors'
    code); no sharing, no auxiliary loss."""

    weight_sharing = False

    def __init__(self, dim_conv1=64, dim_conv2=128, dim_hidden=128):
        super().__init__()
        self.features = two_conv_stages(2, dim_conv1, dim_conv2)
        self.classifier = nn.Sequential(nn.Linear(4 * dim_conv2, dim_hidden), nn.ReLU(), nn.Linear(dim_hidden, 2))

    def forward(self, x):  # x: (N, 2, 14, 14)
        return self.classifier(self.features(x)), None


@register_model
class WSharingModel(Net004):
    """004: the channels split, one convolutional branch shared by both digits, the two feature maps
    merged (concatenated in pair order) before the three fully connected layers. The report says "merged
    prior to the final layer"; the authors' code merges before these three layers, which is what this
    class does. No auxiliary loss (the 10-unit layer is not trained on the digits)."""

    def __init__(self, dim_conv1=64, dim_conv2=128, dim_hidden=100):
        super().__init__()
        self.branch = two_conv_stages(1, dim_conv1, dim_conv2)
        self.classifier = nn.Sequential(
            nn.Linear(8 * dim_conv2, dim_hidden), nn.ReLU(), nn.Linear(dim_hidden, 10), nn.ReLU(), nn.Linear(10, 2))

    def forward(self, x):  # x: (N, 2, 14, 14)
        return self.classifier(both_digits(self.branch, x).flatten(1)), None  # (N, 2)


@register_model
class AuxModel(Net004):
    """004: the weight-sharing model with auxiliary digit losses. Each digit goes through the shared
    branch and a shared MLP (dim_hidden, ReLU, dim_hidden2, ReLU, 10) whose 10 outputs are the digit
    logits; their ReLUs, concatenated in pair order, go through the final Linear 20 -> 2.

    The authors' code computes the digit cross-entropy after that ReLU; here the logits before it
    are returned for the auxiliary loss (as in the 002 models), so digit logits may be negative.
    """

    auxiliary = True

    def __init__(self, dim_conv1=64, dim_conv2=128, dim_hidden=100, dim_hidden2=40):
        super().__init__()
        self.branch = nn.Sequential(
            two_conv_stages(1, dim_conv1, dim_conv2),
            nn.Linear(4 * dim_conv2, dim_hidden), nn.ReLU(),
            nn.Linear(dim_hidden, dim_hidden2), nn.ReLU(),
            nn.Linear(dim_hidden2, 10),
        )
        self.head = nn.Linear(20, 2)

    def forward(self, x):  # x: (N, 2, 14, 14)
        digits = both_digits(self.branch, x)  # (N, 2, 10)
        return self.head(torch.relu(digits).flatten(1)), digits


# ---------------------------------------------------------------------------------------------
# Beyond the seed reports: predict both digits, compare them exactly
# ---------------------------------------------------------------------------------------------


def compare_digit_distributions(digit_logits):
    """Comparison logits from the two digits' class distributions, by exact arithmetic.

    digit_logits: (N, 2, 10) -> (N, 2) = [log P(first > second), log P(first <= second)], with
    P(first <= second) = sum_i P(first = i) P(second >= i) for independent digit predictions.
    Cross-entropy on these logits is the negative log-likelihood of the pair's target.
    """
    probs = torch.softmax(digit_logits, dim=-1)  # (N, 2, 10)
    at_least = probs[:, 1].flip(-1).cumsum(-1).flip(-1)  # (N, 10): P(second >= i)
    p_le = (probs[:, 0] * at_least).sum(-1).clamp(1e-6, 1 - 1e-6)  # (N,)
    return torch.stack((torch.log1p(-p_le), torch.log(p_le)), dim=1)  # (N, 2)


def digit_cnn(widths=(32, 64), dim_hidden=64, dropout=0.25, depth=1):
    """A digit classifier for 1x14x14 images: stages of `depth` 3x3 convolutions (padding 1), each
    followed by batch norm and ReLU, then a 2x2 max-pool ending the stage (14 -> 7 -> 3 with two
    stages); dropout, a hidden linear layer with ReLU, and the 10 digit logits."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth (convolutions per stage) must be a positive integer, got {depth!r}")
    layers, dim_in, size = [], 1, 14
    for dim in widths:
        for _ in range(depth):
            layers += [nn.Conv2d(dim_in, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU()]
            dim_in = dim
        layers.append(nn.MaxPool2d(2))
        size //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(dim_in * size * size, dim_hidden),
                         nn.ReLU(), nn.Linear(dim_hidden, 10))  # (N, 10)


@register_model
class DigitCompare(nn.Module):
    """One shared `digit_cnn` recognises both digits; the comparison is exact arithmetic on the two
    predicted distributions (`compare_digit_distributions`), so it is right whenever the digits
    are, and hedges when one is uncertain. Trained with the pair loss plus the auxiliary digit
    losses. The default widths stay under the course track's 70,000 parameters."""

    report = None  # beyond the seed reports
    weight_sharing = True
    auxiliary = True

    def __init__(self, widths=(32, 64), dim_hidden=64, dropout=0.25, depth=1):
        super().__init__()
        self.digits = digit_cnn(widths, dim_hidden, dropout, depth)

    def forward(self, x):  # x: (N, 2, 14, 14)
        digits = both_digits(self.digits, x)  # (N, 2, 10)
        return compare_digit_distributions(digits), digits
