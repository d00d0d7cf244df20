"""lib.models: every registered architecture answers the same way and every parameter learns;
the registry; the 002 parameter counts and their weight sharing.

Tests taking `model_name` run on each name of `list_models()` (read at collection time) and on the
test-only BNDropoutNet of conftest.py. Models are built with `engine.build_model`, which leaves
torch's global RNG alone.
"""
import pytest
import torch
from torch import nn

from lib import engine, models

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS_002 = ["NetBase", "NetWS", "NetAL", "NetWSAL"]


def conv_params(dim_in, dim_out, k):
    return dim_out * dim_in * k * k + dim_out


def linear_params(dim_in, dim_out):
    return dim_out * dim_in + dim_out


# One 002 branch: conv 1->32 @3x3, conv 32->64 @3x3 (14 -> 12 -> 6 -> 4 -> 2), FC 64*2*2 -> 128 -> 10;
# the head: FC 2*10 -> 128 -> 2.
BRANCH_002 = conv_params(1, 32, 3) + conv_params(32, 64, 3) + linear_params(64 * 2 * 2, 128) + linear_params(128, 10)
HEAD_002 = linear_params(2 * 10, 128) + linear_params(128, 2)


# ----------------------------------------------------------------------------- every model


def test_every_model_declares_the_same_metadata(model_name, pair_batch):
    """Its seed report, weight sharing and auxiliary loss; with shared weights, swapping the two
    digits of each pair swaps their digit logits."""
    cls = models.get_model_class(model_name)
    assert cls.report in (None, "000", "002", "003", "004") and models.model_report(model_name) == cls.report
    assert isinstance(cls.weight_sharing, bool) and isinstance(cls.auxiliary, bool)
    assert cls.published is None or set(cls.published) == {"metric", "mean", "pm", "nb_runs"}
    model = engine.build_model(model_name, seed=0).eval()
    x = pair_batch[0]  # (16, 2, 14, 14)
    _, digits = model(x)
    if digits is not None and cls.weight_sharing:
        assert torch.allclose(model(x.flip(1))[1], digits.flip(1), atol=1e-5)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_have_the_common_shapes_and_are_finite(model_name, pair_batch, mode):
    model = engine.build_model(model_name, seed=0).train(mode == "train")
    x = pair_batch[0]  # (16, 2, 14, 14)
    comparison, digits = model(x)
    assert comparison.shape == (16, 2)
    assert torch.isfinite(comparison).all()
    auxiliary = type(model).auxiliary
    assert (digits is not None) == auxiliary, f"{model_name}.auxiliary is {auxiliary} but digits is {digits!r:.20}"
    if digits is not None:
        assert digits.shape == (16, 2, 10)
        assert torch.isfinite(digits).all()


def test_every_parameter_gets_a_finite_nonzero_gradient(model_name, pair_batch):
    model = engine.build_model(model_name, seed=0).train()
    x, target, classes = pair_batch
    comparison, digits = model(x)
    loss = engine.pair_loss(comparison, digits, target, classes, aux_weight=1.0)  # (1,)
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    loss.sum().backward()
    names = [name for name, _ in model.named_parameters()]
    assert names, f"{model_name} has no parameters"
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{model_name}.{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{model_name}.{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{model_name}.{name} has an all-zero gradient"


def test_building_is_reproducible_and_seeded(model_name):
    a, b, c = (engine.build_model(model_name, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


# ----------------------------------------------------------------------------- registry


def test_registry_starts_with_the_002_models():
    assert models.list_models()[:4] == MODELS_002


def test_unknown_model_raises_a_value_error_listing_registered_names():
    with pytest.raises(ValueError) as info:
        models.create_model("Nope")
    message = str(info.value)
    assert "Nope" in message
    for name in models.list_models():
        assert name in message


def test_registering_a_name_twice_raises_and_keeps_the_first():
    original = models.get_model_class("NetBase")
    impostor = type("NetBase", (nn.Module,), {})
    with pytest.raises(ValueError, match="NetBase"):
        models.register_model(impostor)
    assert models.get_model_class("NetBase") is original


def test_bn_dropout_model_is_registered_only_inside_its_fixture(bn_dropout_model):
    assert models.list_models()[-1] == bn_dropout_model
    assert isinstance(models.create_model(bn_dropout_model), nn.Module)


def test_bn_dropout_model_is_not_left_registered():
    """Runs after the test above (file order): the fixture's registration must be gone."""
    assert "TestOnlyBNDropoutNet" not in models.list_models()


# ----------------------------------------------------------------------------- 002 counts and sharing


def test_002_layer_formula_gives_the_report_numbers():
    assert BRANCH_002 == 53_002
    assert HEAD_002 == 2_946
    assert 2 * BRANCH_002 + HEAD_002 == 108_950
    assert BRANCH_002 + HEAD_002 == 55_948


@pytest.mark.parametrize("name, nb_branches", [("NetBase", 2), ("NetWS", 1), ("NetAL", 2), ("NetWSAL", 1)])
def test_002_parameter_counts(name, nb_branches):
    """Weight sharing halves the branch parameters; the auxiliary loss adds none."""
    model = models.create_model(name)
    assert models.count_parameters(model) == nb_branches * BRANCH_002 + HEAD_002
    assert models.count_parameters(model) == {1: 55_948, 2: 108_950}[nb_branches]


def test_count_parameters_counts_only_trainable_ones():
    model = models.create_model("NetWS")
    model.head.requires_grad_(False)
    assert models.count_parameters(model) == BRANCH_002


@pytest.mark.parametrize("name", MODELS_002)
def test_002_sharing_swapping_the_digits_swaps_their_features(name, pair_batch):
    """With shared weights, swapping the two digits of each pair swaps the 10 values of the two
    branches (seen at the head's input, and in the digit logits when the model returns them);
    with separate branches it does not."""
    model = engine.build_model(name, seed=0).eval()
    x = pair_batch[0]  # (16, 2, 14, 14)
    features = []
    model.head.register_forward_pre_hook(lambda module, args: features.append(args[0].view(-1, 2, 10)))
    _, digits = model(x)
    _, digits_swapped = model(x.flip(1))
    shares = torch.allclose(features[1], features[0].flip(1), atol=1e-5)
    assert shares == type(model).weight_sharing
    if digits is not None:
        assert torch.allclose(digits_swapped, digits.flip(1), atol=1e-5) == type(model).weight_sharing


def test_both_digits_equals_the_branch_on_each_digit(pair_batch):
    branch = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    x = pair_batch[0]  # (16, 2, 14, 14)
    expected = torch.stack([branch(x[:, 0:1]), branch(x[:, 1:2])], dim=1)  # (16, 2, 10)
    assert torch.allclose(models.both_digits(branch, x), expected, atol=1e-6)
    assert torch.allclose(models.each_digit([branch, branch], x), expected, atol=1e-6)
