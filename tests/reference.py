"""An independent, straightforward IP-Adapter attn2: the tests' ground truth.

`W_o (attn(Q, K, V) + w * attn(Q, K_ip, V_ip)) + b_o`, written out per head with an explicit
softmax, installed by replacing the module's forward (the hooks under test are not used).
"""

from __future__ import annotations

import torch


def attend(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    split = lambda t: t.reshape(t.shape[0], -1, heads, d).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
    return (weights @ v).permute(0, 2, 1, 3).reshape(b, n, c)


def ip_attn2(module, x, context, tokens, w_k, w_v, weight):
    """tokens [B, T, cross] per row; w_k may be None for one token (softmax over one key is 1)."""
    q = x @ module.to_q.weight.T
    text = attend(q, context @ module.to_k.weight.T, context @ module.to_v.weight.T, module.heads)
    k_ip = tokens @ (w_k if w_k is not None else torch.zeros_like(w_v)).T
    style = attend(q, k_ip, tokens @ w_v.T, module.heads)
    return module.to_out[0](text + weight * style)


def install(layers, adapter, row_tokens, weights):
    """Replace each attn2's forward by the reference; returns an undo function."""
    undo = []
    for layer, w in zip(layers, weights):
        values = adapter.layer(layer.key)
        w_k = values.to_k_ip.weight if values.to_k_ip is not None else None

        def forward(x, context=None, mask=None, encoder_hidden_states=None, attention_mask=None,
                    *, _m=layer.module, _wk=w_k, _wv=values.to_v_ip.weight, _w=w):
            ctx = context if context is not None else encoder_hidden_states
            return ip_attn2(_m, x, ctx, row_tokens, _wk, _wv, _w)

        layer.module.forward = forward
        undo.append(layer.module)
    return lambda: [m.__dict__.pop("forward") for m in undo]
