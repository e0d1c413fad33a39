"""dmn_train.losses: masking, low-res targets, soft IoU."""

import torch
import torch.nn.functional as F

from dmn_train.losses import masked_bce_with_logits, soft_iou_loss


def test_bce_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.5).to(torch.uint8)
    valid = torch.zeros(2, 8, 8, dtype=torch.bool)
    valid[:, :6, :5] = True
    loss = masked_bce_with_logits(logits, target, valid)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0, :6, :5], target[:, :6, :5].float())
    torch.testing.assert_close(loss, expected)
    changed = logits.clone()
    changed[:, :, 6:] = 100.0  # anything on the padding
    torch.testing.assert_close(masked_bce_with_logits(changed, target, valid), loss)


def test_low_res_target_is_area_downsampled_over_valid_pixels():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :1] = 1  # top-left 2x2 cell: 2 of 4 pixels foreground
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :, 3] = False  # right column of cells half padded
    logits = torch.zeros(1, 1, 2, 2)
    logits[0, 0, 0, 0] = 2.0
    loss = masked_bce_with_logits(logits, target, valid)
    soft = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    weight = torch.tensor([[1.0, 0.5], [1.0, 0.5]])
    per_cell = F.binary_cross_entropy_with_logits(logits[0, 0], soft, reduction="none")
    torch.testing.assert_close(loss, (per_cell * weight).sum() / weight.sum())


def test_upsampled_low_res_loss_is_the_originals():
    """upsample=True: the logits resized bilinearly to the mask's size, per-pixel BCE on the
    valid pixels (the original's low-res loss); differs from the pooled one."""
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 2, 3)
    target = (torch.rand(2, 8, 12) > 0.5).to(torch.uint8)
    valid = torch.zeros(2, 8, 12, dtype=torch.bool)
    valid[:, :7, :9] = True
    up = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False)[:, 0]
    expected = F.binary_cross_entropy_with_logits(up[:, :7, :9], target[:, :7, :9].float())
    loss = masked_bce_with_logits(logits, target, valid, upsample=True)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, masked_bce_with_logits(logits, target, valid))
    prob = torch.sigmoid(up[:, :7, :9])
    t = target[:, :7, :9].float()
    iou = (prob * t).sum((1, 2)) / (prob + t - prob * t).sum((1, 2))
    torch.testing.assert_close(soft_iou_loss(logits, target, valid, upsample=True), (1 - iou).mean())
    # At the target's size already, both ways are the same loss.
    full = torch.randn(2, 1, 8, 12)
    torch.testing.assert_close(masked_bce_with_logits(full, target, valid, upsample=True),
                               masked_bce_with_logits(full, target, valid))


def test_soft_iou():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    perfect = (target * 2 - 1)[:, None] * 50
    assert soft_iou_loss(perfect, target, valid) < 1e-6
    assert soft_iou_loss(-perfect, target, valid) > 1 - 1e-6
    half = torch.zeros(1, 1, 4, 4)  # p = 0.5 everywhere: I = 4, U = 8 + 8 - 4 = 12
    torch.testing.assert_close(soft_iou_loss(half, target, valid), torch.tensor(1 - 4 / 12))
