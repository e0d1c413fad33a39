"""dmn_model.backbone: the feature_info contract, timm backbones, coordinate maps."""

import pytest
import timm
import torch

from dmn_model.backbone import (TinyCNN, create_backbone, final_norm_module, normalization,
                                spatial_coords)
from dmn_model.config import preset


def test_tiny_cnn_feature_contract():
    net = TinyCNN((4, 8, 8, 16, 16))
    feats = net(torch.randn(2, 3, 96, 96))
    assert net.feature_info.channels() == [4, 8, 8, 16, 16]
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 96 // r, 96 // r) for c, r in zip(net.feature_info.channels(), [2, 4, 8, 16, 32])]


def test_tiny_cnn_output_stride_keeps_resolution_after_it_is_reached():
    net = TinyCNN((4, 8, 8, 16, 16), output_stride=16)
    feats = net(torch.randn(1, 3, 96, 96))
    assert net.feature_info.reduction() == [2, 4, 8, 16, 16]
    assert [f.shape[-1] for f in feats] == [48, 24, 12, 6, 6]
    assert TinyCNN((4, 8, 8, 16, 16), output_stride=8).feature_info.reduction() == [2, 4, 8, 8, 8]


def test_timm_backbone_by_name_and_its_normalization():
    net = create_backbone(preset("tiny", backbone="resnet18"))
    assert net.feature_info.channels() == [64, 64, 128, 256, 512]
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert normalization(net) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.slow
def test_dpn92_pyramid_matches_the_paper_and_ends_after_conv5_bn_ac():
    net = create_backbone(preset("paper")).eval()
    assert net.feature_info.channels() == [64, 336, 704, 1552, 2688]
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert list(net.return_layers)[-1] == "features_conv5_bn_ac"
    assert isinstance(net["features_conv5_bn_ac"].bn.act, torch.nn.ReLU)
    with torch.no_grad():
        top = net(torch.randn(1, 3, 64, 64))[-1]
    assert top.shape == (1, 2688, 2, 2) and top.min() >= 0  # post BN-ReLU, as the original


@pytest.mark.parametrize("name, module", [("dpn68", "features.conv5_bn_ac"),
                                          ("resnetv2_18", "norm")])
def test_final_norm_is_the_full_models_own_module(name, module, tmp_path):
    """The top feature is what the full network's forward_features gives (its final norm +
    activation applied; dpn's activation as the original: ReLU, not timm's ELU), and the state
    dict is timm's features_only one plus that module's tensors."""
    torch.manual_seed(0)
    full = timm.create_model(name).eval()
    if name.startswith("dpn"):
        full.features.conv5_bn_ac.bn.act = torch.nn.ReLU()
    for m in full.modules():  # non-trivial BN statistics, so a missing norm would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net = create_backbone(preset("tiny", backbone=name)).eval()
    plain = create_backbone(preset("tiny", backbone=name, backbone_final_norm=False))
    own = net.state_dict()
    prefix = module.replace(".", "_", 1) if "." in module else module
    extra = sorted(set(own) - set(plain.state_dict()))
    assert extra and all(k.startswith(prefix + ".") for k in extra)
    assert set(plain.state_dict()) <= set(own)
    state = full.state_dict()
    # our keys are timm's flattened names: features_conv1_1.x <- features.conv1_1.x
    net.load_state_dict({k: state[k if k in state else k.replace("_", ".", 1)] for k in own})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[-1], full.forward_features(x))
        plain.load_state_dict({k: v for k, v in net.state_dict().items() if k not in extra})
        assert not torch.allclose(plain.eval()(x)[-1], net(x)[-1])  # the norm does something
        torch.testing.assert_close(plain(x)[-2], net(x)[-2])


def test_final_norm_only_where_timm_leaves_it_out():
    assert final_norm_module("dpn92") == "features.conv5_bn_ac"
    assert final_norm_module("resnetv2_50x1_bit.goog_in21k") == "norm"
    for name in ("resnet18", "densenet121", "efficientnet_b0", "convnext_tiny"):
        assert final_norm_module(name) is None, name
    net = create_backbone(preset("tiny", backbone="resnet18"))
    assert list(net.return_layers)[-1] == "layer4"  # ends after a ReLU already


def test_bad_backbone_settings():
    with pytest.raises(ValueError, match="backbone"):
        create_backbone(preset("tiny", backbone="no_such_net"))


def test_spatial_coords_match_text_objseg():
    h, w = 3, 4
    coords = spatial_coords(h, w)
    assert coords.shape == (1, 8, h, w) and coords.dtype == torch.float32
    for y in range(h):
        for x in range(w):
            xmin, xmax = x / w * 2 - 1, (x + 1) / w * 2 - 1
            ymin, ymax = y / h * 2 - 1, (y + 1) / h * 2 - 1
            expected = [xmin, ymin, xmax, ymax, (xmin + xmax) / 2, (ymin + ymax) / 2, 1 / w, 1 / h]
            torch.testing.assert_close(coords[0, :, y, x], torch.tensor(expected))
