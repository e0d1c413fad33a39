"""dmn_model.network: the DMN's input/output contract, padding invariance, freezing, devices."""

import pytest
import torch

from dmn_model import DMN, preset

VOCAB = 30


def _small(**changes):
    base = dict(tiny_cnn_channels=(4, 8, 8, 16, 16), emb_size=8, hid_size=8, num_filters=3,
                mixed_size=8, hid_mixed_size=8, upsamp_channels=(8, 8, 8))
    return preset("tiny", **(base | changes))


def _batch(batch=3, size=64, steps=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    tokens = torch.randint(1, VOCAB, (batch, steps), generator=gen)
    lengths = torch.tensor([steps, 2, 4][:batch])
    tokens[torch.arange(steps)[None, :] >= lengths[:, None]] = 0
    return images, tokens, lengths


@pytest.mark.parametrize("high_res", [False, True])
def test_output_shapes(high_res):
    torch.manual_seed(0)
    model = DMN(_small(high_res=high_res), VOCAB)
    images, tokens, lengths = _batch(size=96)
    logits, lowres = model(model.normalize(images), tokens, lengths, return_aux=True)
    assert lowres.shape == (3, 1, 6, 6) and lowres.dtype == torch.float32  # tiny: stride 16
    assert logits.shape == ((3, 1, 96, 96) if high_res else (3, 1, 6, 6))
    assert model(model.normalize(images), tokens, lengths).shape == logits.shape


def test_output_stride_16_skips_follow_the_strides():
    model = DMN(_small(tiny_cnn_output_stride=16, upsamp_amplification=8), VOCAB)
    # From stride 16: the deepest feature at 16 (stage 5, not stage 4), then 8, then 4.
    assert model.skip_index == [4, 2, 1] and model.output_stride == 16
    images, tokens, lengths = _batch(size=96)
    logits, lowres = model(model.normalize(images), tokens, lengths, return_aux=True)
    assert lowres.shape == (3, 1, 6, 6) and logits.shape == (3, 1, 96, 96)
    assert DMN(_small(), VOCAB).skip_index == [4, 2]  # the tiny preset: 16, 8
    assert DMN(_small(tiny_cnn_output_stride=32, upsamp_amplification=8), VOCAB).skip_index == [4, 3, 2]
    with pytest.raises(ValueError, match="stride 1;"):
        DMN(_small(tiny_cnn_output_stride=16, upsamp_amplification=32,
                   upsamp_channels=(8,) * 5), VOCAB)


@pytest.mark.parametrize("lstm", [False, True])
def test_sentence_output_does_not_depend_on_padding(lstm):
    torch.manual_seed(0)
    model = DMN(_small(lstm=lstm), VOCAB).eval()  # eval: BatchNorm must not mix the batch
    images, tokens, lengths = _batch()
    with torch.no_grad():
        batched = model(model.normalize(images), tokens, lengths)
        for i in range(3):
            n = int(lengths[i])
            alone = model(model.normalize(images[i:i + 1]), tokens[i:i + 1, :n], lengths[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-5, rtol=1e-5)
        # Different padding tokens change nothing either.
        noisy = tokens.clone()
        noisy[tokens == 0] = 7
        torch.testing.assert_close(model(model.normalize(images), noisy, lengths), batched)
        _, lowres = model(model.normalize(images), tokens, lengths, return_aux=True)
    assert not lowres.requires_grad  # no_grad reaches every module


def test_all_trainable_parameters_get_gradients():
    torch.manual_seed(0)
    model = DMN(_small(), VOCAB)
    images, tokens, lengths = _batch()
    logits, lowres = model(model.normalize(images), tokens, lengths, return_aux=True)
    (logits.mean() + lowres.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_freeze_trains_only_the_upsampling_module():
    torch.manual_seed(0)
    model = DMN(_small(freeze=True), VOCAB).train()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"upsampling"}
    assert not model.backbone.training and model.upsampling.training
    images, tokens, lengths = _batch()
    model(model.normalize(images), tokens, lengths).mean().backward()
    assert all(p.grad is not None for p in model.upsampling.parameters())


def test_low_res_weights_start_high_res_training():
    torch.manual_seed(0)
    low = DMN(_small(high_res=False), VOCAB)
    high = DMN(_small(high_res=True), VOCAB)
    result = high.load_state_dict(low.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("upsampling.") for k in result.missing_keys)


def test_normalize_uses_backbone_constants():
    model = DMN(_small(), VOCAB)
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = model.normalize(images)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 0, 0], expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="vocab_size"):
        DMN(_small(), 1)
    with pytest.raises(ValueError, match="upsamp_amplification"):
        DMN(_small(upsamp_amplification=64, upsamp_channels=(8,) * 6), VOCAB)
    model = DMN(_small(), VOCAB)
    images, tokens, _ = _batch()
    with pytest.raises(ValueError, match="lengths"):
        model(model.normalize(images), tokens, torch.tensor([0, 2, 9]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = DMN(_small(), VOCAB).eval()
    images, tokens, lengths = _batch()
    with torch.no_grad():
        cpu = model(model.normalize(images), tokens, lengths)
        model.cuda()
        gpu = model(model.normalize(images.cuda()), tokens.cuda(), lengths.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("high_res", [False, True])
def test_one_image_encoded_once_serves_many_sentences(high_res):
    torch.manual_seed(0)
    model = DMN(_small(high_res=high_res), VOCAB).eval()
    images, tokens, lengths = _batch()
    with torch.no_grad():
        per_pair = model(model.normalize(images[[1, 1, 1]]), tokens, lengths)
        features = model.encode_image(model.normalize(images[1:2]))
        shared = model.segment(features, tokens, lengths, image_index=torch.tensor([0, 0, 0]))
        with pytest.raises(ValueError, match="pass image_index"):
            model.segment(features, tokens, lengths)
    torch.testing.assert_close(shared, per_pair)


@pytest.mark.parametrize("high_res,freeze,lstm", [(False, False, False), (True, False, False),
                                                  (True, True, False), (True, False, True)])
def test_eight_sentences_on_two_images_equal_per_sentence_forward(high_res, freeze, lstm):
    """segment's per-image terms, gathered by image_index, give the values and gradients of
    the forward pass on each sentence's own copy of its image (odd, non-square input)."""
    torch.manual_seed(0)
    model = DMN(_small(high_res=high_res, freeze=freeze, lstm=lstm, mixed_layers=2,
                       hid_mixed_size=6), VOCAB).eval()
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8, generator=gen)
    tokens = torch.randint(1, VOCAB, (8, 5), generator=gen)
    lengths = torch.tensor([5, 1, 3, 2, 5, 4, 1, 2])
    tokens[torch.arange(5)[None, :] >= lengths[:, None]] = 0
    image_index = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0])
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for shared in (True, False):
        if shared:
            features = model.encode_image(model.normalize(images))
            out, lowres = model.segment(features, tokens, lengths, image_index, return_aux=True)
        else:
            out, lowres = model(model.normalize(images[image_index]), tokens, lengths,
                                return_aux=True)
        loss = out.square().mean() + (0 if freeze else lowres.square().mean())
        results.append((out, torch.autograd.grad(loss, params)))
    (fast, fast_grads), (slow, slow_grads) = results
    assert fast.shape == ((8, 1, 70, 90) if high_res else (8, 1, 5, 6))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="image_index"):
        model.segment(features, tokens, lengths, torch.tensor([0, 1, 2, 0, 0, 1, 0, 0]))


def test_coordinates_span_each_image_not_its_padding():
    """The same image padded two ways (a 64×48 image alone, and in a 96×96 padded batch): after
    the backbone, a sentence's low-res logits depend on the image's own cells only, because the
    coordinate maps span the image's region (the original's unpadded batch of one). A config
    from before ``coords_over_image`` spans the padded grid, and the padding moves its logits."""
    from dmn_model.backbone import spatial_coords
    from dmn_model.network import ImageFeatures

    inside = spatial_coords(6, 6, extent=torch.tensor([[4, 3], [6, 6]]))
    assert inside.shape == (2, 8, 6, 6)
    torch.testing.assert_close(inside[0, :, :4, :3], spatial_coords(4, 3)[0])
    torch.testing.assert_close(inside[1:], spatial_coords(6, 6))
    assert float(inside[0, 2, 0, -1]) == 3.0  # xmax goes on past 1 into the padding

    torch.manual_seed(0)
    model = DMN(_small(), VOCAB).eval()
    old = DMN(_small(coords_over_image=False), VOCAB).eval()
    old.load_state_dict(model.state_dict())
    images, tokens, lengths = _batch(batch=1, size=64, seed=2)
    images = images[..., :48]
    size = torch.tensor([[64, 48]])
    with torch.no_grad():
        alone = model.encode_image(model.normalize(images), size)
        assert [m.shape[-2:] for m in alone.maps][-1] == (4, 3)
        # The padded batch's features: the same cells, zeros beyond (padding is any value).
        padded = ImageFeatures([torch.nn.functional.pad(m, (0, m.shape[-1], 0, m.shape[-2] // 2),
                                                        value=5.0)
                                for m in alone.maps], (96, 96), size)
        for net, same in ((model, True), (old, False)):
            _, lowres = net.segment(alone, tokens, lengths, return_aux=True)
            _, in_batch = net.segment(padded, tokens, lengths, return_aux=True)
            assert in_batch.shape[-2:] == (6, 6)
            close = torch.allclose(in_batch[..., :4, :3], lowres, atol=1e-6, rtol=1e-5)
            assert close == same
        # forward passes image_size on; without it the images fill their canvas (as before).
        full = model(model.normalize(images), tokens, lengths)
        torch.testing.assert_close(model(model.normalize(images), tokens, lengths, image_size=size), full)
