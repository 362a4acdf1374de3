"""Decoder: the paper's architecture exactly, and the folded forward equal to the reference forward."""

import pytest
import torch

from engine.decoder import DECODER_PRESETS, Decoder, DecoderConfig, decoder_preset


def test_paper_preset_matches_reference_numbers():
    dec = Decoder(decoder_preset("paper"))
    assert dec.num_parameters() == 1_843_195  # the reference's count
    # the layer before the skip outputs 512 - 259, the skip layer takes 512
    assert dec.lin3.weight.shape == (253, 512)
    assert dec.lin4.weight.shape == (512, 512)
    assert dec.lin0.weight.shape == (512, 259)
    assert dec.lin8.weight.shape == (1, 512)
    # weight norm g has shape (out, 1) like the reference's weight_g
    assert dec.lin0.parametrizations.weight.original0.shape == (512, 1)
    assert not hasattr(dec.lin8, "parametrizations")


def test_small_preset_is_much_cheaper():
    paper, small = Decoder(DECODER_PRESETS["paper"]), Decoder(DECODER_PRESETS["small"])
    assert small.flops_per_point() * 5 < paper.flops_per_point()
    assert small.num_parameters() * 4 < paper.num_parameters()


@pytest.mark.parametrize(
    "config",
    [
        DecoderConfig(code_length=16, hidden_dims=(64,) * 6, skip_layers=(3,), norm_layers=tuple(range(6))),
        DecoderConfig(code_length=8, hidden_dims=(48,) * 5, skip_layers=(2, 4), weight_norm=False, norm_layers=(0, 1)),
        DecoderConfig(code_length=8, hidden_dims=(48,) * 4, skip_layers=(2,), xyz_in_all=True, inner_tanh=True),
    ],
)
def test_folded_forward_equals_row_forward(config):
    torch.manual_seed(0)
    dec = Decoder(config).eval()
    codes = torch.randn(3, config.code_length)
    xyz = torch.rand(3, 50, 3) * 2 - 1
    rows = torch.cat([codes[:, None].expand(-1, 50, -1), xyz], dim=-1)
    expected = dec(rows).squeeze(-1)
    got = dec.forward_codes(codes, xyz)
    assert torch.allclose(got, expected, atol=1e-6)
    single = dec.sdf(codes[1], xyz[1], chunk=7)
    assert torch.allclose(single, expected[1], atol=1e-6)


def test_output_is_bounded_by_tanh():
    dec = Decoder(DecoderConfig(code_length=4, hidden_dims=(32,) * 3, skip_layers=(2,), norm_layers=()))
    with torch.no_grad():
        for p in dec.parameters():
            p.mul_(50)
    out = dec.eval().forward_codes(torch.randn(2, 4), torch.rand(2, 100, 3))
    assert out.abs().max() <= 1.0


def test_dropout_only_in_training():
    dec = Decoder(DecoderConfig(code_length=4, hidden_dims=(64,) * 3, skip_layers=(2,), dropout_prob=0.5))
    rows = torch.rand(200, 7)
    dec.train()
    assert not torch.equal(dec(rows), dec(rows))
    dec.eval()
    assert torch.equal(dec(rows), dec(rows))


def test_config_round_trip_and_validation():
    cfg = DECODER_PRESETS["small"]
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown decoder config keys"):
        DecoderConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="too narrow"):
        DecoderConfig(code_length=256, hidden_dims=(128,) * 8)
    with pytest.raises(ValueError, match="unknown decoder preset"):
        decoder_preset("huge")
