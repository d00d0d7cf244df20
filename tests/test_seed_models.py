"""The architectures of seed reports 000, 003 and 004: report attributes, the [0, z] trick, the 003
parameter band and search space. Shapes, gradients and the engine are tested for every registered
model in test_models.py and test_engine.py."""
import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F

from lib import models
from lib.models import count_parameters, count_parameters_of, create_model, get_model_class, model_report

SEED_MODELS = {
    "000": ["ConvNetBase", "ConvNetBaseAux", "ConvNetSep", "ConvNetSepAux"],
    "003": ["BasicNet1", "AuxNet1", "AuxNet2", "AuxNet3"],
    "004": ["SimpleCNN", "WSharingModel", "AuxModel"],
}
NEW_MODELS = [name for names in SEED_MODELS.values() for name in names]
AUXILIARY = {"ConvNetBaseAux", "ConvNetSepAux", "AuxNet1", "AuxNet2", "AuxNet3", "AuxModel"}
TRAINING_KEYS = {"optimizer", "lr", "batch_size", "epochs", "aux_weight"}


def test_every_seed_model_is_registered_under_its_report():
    for report, names in SEED_MODELS.items():
        for name in names:
            assert model_report(name) == report, name
    for name in ("NetBase", "NetWS", "NetAL", "NetWSAL"):
        assert model_report(name) == "002"
    assert set(NEW_MODELS) <= set(models.list_models())


@pytest.mark.parametrize("name", NEW_MODELS)
def test_report_attributes(name):
    cls = get_model_class(name)
    assert cls.published is None or isinstance(cls.published, dict)
    assert isinstance(cls.report_defaults, dict) and set(cls.report_defaults) <= TRAINING_KEYS
    if "aux_weight" in cls.report_defaults:
        assert name in AUXILIARY


@pytest.mark.parametrize("name", NEW_MODELS)
def test_digit_logits_only_for_auxiliary_models(name):
    torch.manual_seed(0)
    comparison, digits = create_model(name).eval()(torch.randn(3, 2, 14, 14))
    assert comparison.shape == (3, 2)
    assert (digits is not None) == (name in AUXILIARY)


def test_published_numbers_of_000():
    expected = {"ConvNetBase": (88.71, 0.48), "ConvNetBaseAux": (93.06, 0.41),
                "ConvNetSep": (86.00, 0.72), "ConvNetSepAux": (91.33, 0.50)}
    for name, (mean, pm) in expected.items():
        published = get_model_class(name).published
        assert (published["mean"], published["pm"], published["nb_runs"]) == (mean, pm, 15)
    for name in SEED_MODELS["003"] + SEED_MODELS["004"]:
        assert get_model_class(name).published is None


def test_report_defaults_of_003_and_004():
    for name in SEED_MODELS["003"]:
        defaults = get_model_class(name).report_defaults
        assert (defaults["optimizer"], defaults["lr"], defaults["batch_size"]) == ("Adam", 0.005, 100)
        assert defaults.get("aux_weight") == (1.0 if name in AUXILIARY else None)
    for name in SEED_MODELS["004"]:
        assert get_model_class(name).report_defaults == {"optimizer": "SGD", "lr": 0.1, "epochs": 50}


def test_zero_z_logits_make_cross_entropy_binary_cross_entropy():
    z = torch.randn(64, 1, dtype=torch.float64) * 5
    target = torch.randint(0, 2, (64,))
    ce = F.cross_entropy(models.binary_logit_pair(z), target)
    bce = F.binary_cross_entropy_with_logits(z.squeeze(1), target.double())
    torch.testing.assert_close(ce, bce, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SEED_MODELS["000"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_000_models_answer_zero_then_z(name, batch_norm):
    model = create_model(name, c=8, f=4, batch_norm=batch_norm).eval()
    comparison, _ = model(torch.randn(4, 2, 14, 14))
    assert torch.all(comparison[:, 0] == 0)


def test_000_base_shares_and_sep_does_not():
    """'Base' = one set of convolution weights for both digits, 'Sep' = two."""
    base, sep = create_model("ConvNetBase"), create_model("ConvNetSep")
    assert 2 * count_parameters(base.conv) == count_parameters(sep.conv)
    x = torch.randn(2, 2, 14, 14)
    swapped = x.flip(1)
    base.eval()
    torch.testing.assert_close(base.conv(x), base.conv(swapped).flip(1))  # the same branch on either digit
    with pytest.raises(ValueError):
        create_model("ConvNetBase", c=7)
    with pytest.raises(TypeError):
        create_model("ConvNetBase", h=16)  # h is the auxiliary module's width only


@pytest.mark.parametrize("name", NEW_MODELS)
def test_parameter_count_on_meta_device_matches(name):
    assert count_parameters_of(name) == count_parameters(create_model(name))


@pytest.mark.parametrize("name", SEED_MODELS["003"])
def test_003_defaults_are_in_the_band_and_follow_the_rule(name):
    low, high = models.PARAMETER_BAND_003
    assert low <= count_parameters_of(name) <= high
    signature = inspect.signature(get_model_class(name))
    defaults = {option: signature.parameters[option].default for option in get_model_class(name).width_options}
    assert defaults == models.default_widths_003(name)
    assert defaults in models.architecture_search_space_003(name)
    assert signature.parameters["dropout"].default == 0.5


@pytest.mark.parametrize("name", SEED_MODELS["003"])
def test_003_search_space_is_the_band(name):
    space = models.architecture_search_space_003(name)
    assert space
    low, high = models.PARAMETER_BAND_003
    for options in space:
        assert set(options) == set(get_model_class(name).width_options)
        assert set(options.values()) <= set(models.SEARCH_WIDTHS_003)
        assert low <= count_parameters_of(name, **options) <= high
    assert len({tuple(o.values()) for o in space}) == len(space)


def test_search_space_is_for_003_models_only():
    with pytest.raises(ValueError):
        models.architecture_search_space_003("AuxModel")


def test_pruned_search_space_matches_brute_force():
    """The search stops raising a width once the count leaves the band; AuxNet3's 216 combinations are
    cheap enough to check that against the full product."""
    names = get_model_class("AuxNet3").width_options
    brute = [dict(zip(names, widths)) for widths in itertools.product(models.SEARCH_WIDTHS_003, repeat=len(names))
             if models.PARAMETER_BAND_003[0] <= count_parameters_of("AuxNet3", **dict(zip(names, widths)))
             <= models.PARAMETER_BAND_003[1]]
    assert models.architecture_search_space_003("AuxNet3") == brute
