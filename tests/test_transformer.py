import torch
from torch import nn

from detr_full.transformer import MultiheadAttention, Transformer


def _check_unit(unit):
    kw = {k: v for k, v in unit["kwargs"].items() if k != "return_intermediate_dec"}
    model = Transformer(**kw).eval()
    model.load_state_dict(unit["state_dict"])
    hs, memory = model(unit["src"], unit["mask"], unit["query_embed"], unit["pos_embed"])
    for ours, ref in ((hs, unit["hs"]), (memory, unit["memory"])):
        assert (ours - ref).abs().max() <= 5e-4 * ref.abs().max()


def test_golden_postnorm(golden):
    _check_unit(golden["units"]["transformer_postnorm"])


def test_golden_prenorm(golden):
    unit = golden["units"]["transformer_prenorm"]
    assert "encoder.norm.weight" in unit["state_dict"]
    _check_unit(unit)


def test_attention_matches_torch_multihead_attention():
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = MultiheadAttention(16, 4).eval()
    ours.load_state_dict(ref.state_dict())  # same parameter names
    q, k = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 4:] = True
    out_ref, w_ref = ref(q, k, k, key_padding_mask=pad)
    out, w = ours(q, k, k, pad)
    assert w is None
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    ours.return_weights = True
    out, w = ours(q, k, k, pad)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    assert (w[1, :, 4:] == 0).all()


def test_golden_attention_weights(golden_model, golden):
    """The last encoder self-attention and decoder cross-attention maps, as the attention notebook hooks them."""
    inp, ref = golden["inputs"], golden["intermediates"]
    enc = golden_model.transformer.encoder.layers[-1].self_attn
    dec = golden_model.transformer.decoder.layers[-1].multihead_attn
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o[1]))
               for name, m in (("enc", enc), ("dec", dec))]
    enc.return_weights = dec.return_weights = True
    try:
        golden_model(inp["tensors"], inp["mask"])
    finally:
        enc.return_weights = dec.return_weights = False
        for h in handles:
            h.remove()
    for name, key in (("enc", "enc_last_self_attn_weights"), ("dec", "dec_last_cross_attn_weights")):
        assert (seen[name] - ref[key]).abs().max() <= 5e-4 * ref[key].abs().max()


def test_golden_memory_and_decoder_outputs(golden_model, golden):
    inp, ref = golden["inputs"], golden["intermediates"]
    features, mask, pos = golden_model.backbone(inp["tensors"], inp["mask"])
    src = golden_model.input_proj(features)
    assert (src - ref["input_proj"]).abs().max() <= 2e-5 * ref["input_proj"].abs().max()
    hs, memory = golden_model.transformer(src, mask, golden_model.query_embed.weight, pos)
    assert (memory - ref["memory"]).abs().max() <= 2e-5 * ref["memory"].abs().max()
    assert (hs - ref["hs"]).abs().max() <= 5e-4 * ref["hs"].abs().max()


def test_first_decoder_self_attention_gets_no_gradient():
    """Layer 0 sees tgt = 0: its self-attention output is the value bias whatever the weights."""
    model = Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32,
                        dropout=0.0)
    hs, _ = model(torch.randn(1, 16, 2, 3), torch.zeros(1, 2, 3, dtype=torch.bool), torch.randn(4, 16),
                  torch.randn(1, 16, 2, 3))
    hs.sum().backward()
    grad = model.decoder.layers[0].self_attn.in_proj_weight.grad
    assert grad.abs().max() < 1e-6 and model.decoder.layers[1].self_attn.in_proj_weight.grad.abs().max() > 0


def test_position_at_input_adds_it_once_to_the_encoder_input_and_to_no_attention():
    from detr_full.transformer import Transformer
    torch.manual_seed(0)
    at_input = Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                           dropout=0.0, pos_at_input=True).eval()
    official = Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
                           dropout=0.0).eval()
    official.load_state_dict(at_input.state_dict())                      # the same weights, no new ones
    src, pos = torch.randn(2, 16, 3, 4), torch.randn(2, 16, 3, 4)
    mask, queries = torch.zeros(2, 3, 4, dtype=torch.bool), torch.randn(5, 16)
    ours = at_input(src, mask, queries, pos)[0]
    torch.testing.assert_close(ours, official(src + pos, mask, queries, torch.zeros_like(pos))[0])
    assert not torch.allclose(ours, official(src, mask, queries, pos)[0])
