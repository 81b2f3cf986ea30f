import pytest
import torch
from torch import nn

from bnrepro.models import MLP, LeNet, build_model, count_parameters, has_batchnorm, init_weights


@pytest.mark.parametrize("norm", ["bn", "none", "bnrepro"])
def test_lenet_shapes_and_norms(norm):
    model = LeNet(norm=norm)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert has_batchnorm(model) == (norm != "none")


def test_lenet_matches_d2l_bn_chapter_parameter_counts():
    # d2l's BN-chapter LeNet (no padding, 16*4*4 = 256 features into the first linear layer):
    # conv 6*25+6, conv 16*6*25+16, linear 256*120+120, 120*84+84, 84*10+10
    plain = 156 + 2416 + 30840 + 10164 + 850
    assert count_parameters(LeNet(norm="none")) == plain == 44_426
    # BN adds a scale and a shift per channel/unit: 2 * (6 + 16 + 120 + 84) = 452
    assert count_parameters(LeNet(norm="bn")) == plain + 452


def test_lenet_on_cifar_shapes():
    assert LeNet(in_channels=3, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_ioffe_figure1():
    model = MLP(784, (100, 100, 100), norm="bn", activation="sigmoid", init_std=0.01)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(weights) == 4 and abs(weights[0].std().item() - 0.01) < 0.002


def test_bad_choices_name_the_field():
    with pytest.raises(ValueError, match="norm='layer'"):
        LeNet(norm="layer")
    with pytest.raises(ValueError, match="activation='gelu'"):
        LeNet(activation="gelu")
    with pytest.raises(ValueError, match="model='resnet9000'"):
        build_model("resnet9000")
    with pytest.raises(ValueError, match="init='he'"):
        init_weights(LeNet(), "he")
