"""dmn_model.backbone: the feature_info contract, timm backbones, coordinate maps."""

import pytest
import torch

from dmn_model.backbone import TinyCNN, create_backbone, normalization, spatial_coords
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
def test_dpn92_pyramid_matches_the_paper():
    net = create_backbone(preset("paper"))
    assert net.feature_info.channels() == [64, 336, 704, 1552, 2688]
    assert net.feature_info.reduction() == [2, 4, 8, 16, 32]


def test_local_pretrained_weights_are_loaded(tmp_path):
    import timm
    full = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(full.conv1.weight, 0.125)
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    net = create_backbone(preset("tiny", backbone="resnet18", pretrained_path=str(path)))
    assert torch.all(net.conv1.weight == 0.125)


@pytest.mark.parametrize("changes, message", [
    ({"backbone": "no_such_net"}, "backbone"),
    ({"backbone": "resnet18", "pretrained_path": "/nonexistent.pth"}, "pretrained_path"),
])
def test_bad_backbone_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(preset("tiny", **changes))


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
