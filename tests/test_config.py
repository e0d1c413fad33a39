"""dmn_model.config: presets, validation, JSON round trip."""

import dataclasses
import json

import pytest

from dmn_model.config import PRESETS, DMNConfig, preset


def test_paper_preset_is_the_original_readme_command():
    cfg = preset("paper")
    assert (cfg.backbone, cfg.emb_size, cfg.hid_size, cfg.lang_layers) == ("dpn92", 1000, 1000, 3)
    assert (cfg.num_filters, cfg.mix_we, cfg.mixed_size) == (10, True, 1000)
    assert (cfg.hid_mixed_size, cfg.mixed_layers, cfg.lstm) == (1005, 3, False)
    assert cfg.upsamp_channels == (512, 256, 128, 64, 32) and cfg.upsamp_amplification == 32


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = preset(name)
    text = json.dumps(dataclasses.asdict(cfg))
    assert DMNConfig.from_dict(json.loads(text)) == cfg


def test_from_dict_rejects_unknown_keys():
    data = dataclasses.asdict(preset("tiny")) | {"hidden": 3}
    with pytest.raises(ValueError, match="unknown DMNConfig field.*hidden"):
        DMNConfig.from_dict(data)


def test_overrides_and_unknown_preset():
    cfg = preset("paper", lstm=True, num_filters=4, high_res=True)
    assert cfg.lstm and cfg.num_filters == 4 and cfg.high_res
    assert preset("paper").num_filters == 10  # presets are not mutated
    with pytest.raises(ValueError, match="paper"):
        preset("huge")


@pytest.mark.parametrize("field, value, message", [
    ("num_filters", 0, "num_filters"),
    ("mix_we", 1, "mix_we"),
    ("upsamp_amplification", 6, "power of two"),
    ("upsamp_amplification", 64, "needs 6 upsamp_channels"),
    ("upsamp_mode", "cubic", "bilinear"),
    ("upsamp_activation", "gelu", "prelu"),
    ("upsamp_kernel", 2, "odd"),
    ("tiny_cnn_channels", (8, 8), "5 entries"),
    ("tiny_cnn_output_stride", 4, "8, 16 or 32"),
    ("freeze", True, "high_res"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        preset("paper", **{field: value})
