"""Synchformer's two segment encoders: MotionFormer (video) and AST (audio), with the CLS pooling both end in.

Reference code: hkchengrex/av-benchmark@050a5cd `av_bench/synchformer/` (motionformer.py, video_model_builder.py,
vit_helper.py, an AST patched from HF transformers' modeling_ast.py). `synchformer` builds them under the official
checkpoint's key names (`vfeat_extractor.`, `afeat_extractor.`); every stream is DIM = 768 wide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AST", "DIM", "ClsPool", "MotionFormer"]

DIM = 768  # every stream's width


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------------


class ClsPool(nn.Module):
    """A pre-norm transformer encoder layer over [CLS, tokens] that returns the CLS output: pools a token group
    (one frame's 14x14 patches, one time step's 12 frequency patches) to one vector."""

    def __init__(self, dim: int = DIM, heads: int = 12) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """`x` (M, L, D) -> (M, D)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (M, 1+L, D)
        h = self.norm1(x)  # (M, 1+L, D)
        # Only the CLS row is returned and the rest of the layer is per token, so only CLS needs to query.
        c = x[:, :1] + self.self_attn(h[:, :1], h, h, need_weights=False)[0]  # (M, 1, D)
        c = c + self.linear2(F.gelu(self.linear1(self.norm2(c))))  # (M, 1, D)
        return c[:, 0]  # (M, D)


# ----------------------------------------------------------------------------------------------------------------
# The video encoder: MotionFormer (divided space-time ViT-B/16 on 16-frame segments)
# ----------------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """The 2D patch embedding of the image ViT the video model grew from; in the checkpoint, unused."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, kernel_size=16, stride=16)


class PatchEmbed3D(nn.Module):
    """Tubelet embedding: 2 frames x 16 x 16 pixels -> one token."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, DIM, kernel_size=(2, 16, 16), stride=(2, 16, 16))

    def forward(self, x: Tensor) -> Tensor:
        """`x` (N, 3, 16, 224, 224) -> (N, 8*14*14, D), tokens in (t, h, w) order."""
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, 1568, D)


class DividedAttention(nn.Module):
    """MotionFormer's divided attention: CLS attends to every token; the other tokens attend to CLS and to the
    tokens of their own frame ("space") or of their own patch position across frames ("time")."""

    def __init__(self, dim: int = DIM, heads: int = 12) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, frames: int, over: str) -> Tensor:
        """`x` (N, 1 + frames*P, D), `over` "space" or "time" -> (N, 1 + frames*P, D)."""
        n, length, dim = x.shape
        patches = (length - 1) // frames
        qkv = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads)  # (N, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, L, d)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (N, H, 1, d)

        def grouped(t: Tensor) -> Tensor:  # (N, H, L, d) -> (N, H, G, group, d)
            t = t[:, :, 1:].unflatten(2, (frames, patches))  # (N, H, F, P, d)
            return t if over == "space" else t.transpose(2, 3)  # space: groups are frames; time: positions

        q_, k_, v_ = grouped(q), grouped(k), grouped(v)  # (N, H, G, group, d)
        groups = q_.shape[2]
        k_ = torch.cat([k[:, :, None, :1].expand(-1, -1, groups, -1, -1), k_], dim=3)  # (N, H, G, 1+group, d)
        v_ = torch.cat([v[:, :, None, :1].expand(-1, -1, groups, -1, -1), v_], dim=3)  # (N, H, G, 1+group, d)
        out = F.scaled_dot_product_attention(q_, k_, v_)  # (N, H, G, group, d)
        if over == "time":
            out = out.transpose(2, 3)  # (N, H, F, P, d)
        out = torch.cat([cls_out, out.flatten(2, 3)], dim=2)  # (N, H, L, d)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))  # (N, L, D)


class Mlp(nn.Module):
    """The ViT feed-forward block."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (norm3), then space attention (norm1), then the MLP (norm2), each residual."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DividedAttention(dim)
        self.timeattn = DividedAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """`x` (N, 1 + frames*196, D) -> same."""
        x = x + self.timeattn(self.norm3(x), frames, "time")  # (N, L, D)
        x = x + self.attn(self.norm1(x), frames, "space")  # (N, L, D)
        return x + self.mlp(self.norm2(x))  # (N, L, D)


class MotionFormer(nn.Module):
    """The video encoder: 16 frames -> 8 x 14 x 14 tubelet tokens -> 12 divided blocks -> norm -> one vector per
    tubelet time step (spatial_attn_agg over its 196 patches)."""

    def __init__(self, depth: int = 12, segment: int = 16) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + 14 * 14, DIM))  # CLS + one per spatial position
        self.temp_embed = nn.Parameter(torch.empty(1, segment // 2, DIM))  # one per tubelet time step
        self.patch_embed = PatchEmbed()
        self.patch_embed_3d = PatchEmbed3D()
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock() for _ in range(depth))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.spatial_attn_agg = ClsPool(DIM, heads=12)

    def forward(self, x: Tensor) -> Tensor:
        """`x` (N, 3, 16, 224, 224) normalised pixels of N segments -> (N, 8, D)."""
        n = x.shape[0]
        frames = self.temp_embed.shape[1]
        x = self.patch_embed_3d(x)  # (N, 1568, D), index t*196 + h*14 + w
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)  # (N, 1569, D)
        # "separate" position embedding: spatial table tiled over time plus a temporal table repeated over space;
        # the temporal table has exactly the 8 steps of a 16-frame segment, so nothing is interpolated.
        space = self.pos_embed[:, 1:].repeat(1, frames, 1)  # (1, 1568, D)
        time = self.temp_embed.repeat_interleave(self.pos_embed.shape[1] - 1, dim=1)  # (1, 1568, D)
        x = x + torch.cat([self.pos_embed[:, :1], space + time], dim=1)  # (N, 1569, D)
        for block in self.blocks:
            x = block(x, frames)  # (N, 1569, D)
        x = self.norm(x[:, 1:])  # (N, 1568, D) without CLS
        x = x.reshape(n * frames, -1, DIM)  # (N*8, 196, D): one frame's patches per row
        return self.spatial_attn_agg(x).view(n, frames, DIM)  # (N, 8, D)


# ----------------------------------------------------------------------------------------------------------------
# The audio encoder: AST (HF transformers' ASTModel layout, 12 layers, on 128 x 66 log-mels)
# ----------------------------------------------------------------------------------------------------------------


class ASTPatchEmbeddings(nn.Module):
    """16x16 patches of the (mel, time) plane at stride 10 in both directions."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Conv2d(1, DIM, kernel_size=16, stride=10)


class ASTEmbeddings(nn.Module):
    """CLS and distillation tokens, patch tokens and the position table cut to 2 + 12*6 entries."""

    def __init__(self, patches: int = 12 * 6) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, DIM))
        self.distillation_token = nn.Parameter(torch.empty(1, 1, DIM))
        self.position_embeddings = nn.Parameter(torch.empty(1, 2 + patches, DIM))
        self.patch_embeddings = ASTPatchEmbeddings()

    def forward(self, mel: Tensor) -> Tensor:
        """`mel` (N, 128, 66) -> (N, 2 + 72, D), patch tokens in (freq, time) order."""
        n = mel.shape[0]
        x = self.patch_embeddings.projection(mel.unsqueeze(1)).flatten(2).transpose(1, 2)  # (N, 72, D)
        aux = [self.cls_token.expand(n, -1, -1), self.distillation_token.expand(n, -1, -1)]
        return torch.cat([*aux, x], dim=1) + self.position_embeddings  # (N, 74, D)


class ASTSelfAttention(nn.Module):
    """Query, key and value projections of one AST layer."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(DIM, DIM)
        self.key = nn.Linear(DIM, DIM)
        self.value = nn.Linear(DIM, DIM)


class Dense(nn.Module):
    """One linear map under HF's `dense` name (attention output, intermediate, output)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class ASTAttention(nn.Module):
    """Multi-head self-attention with its output projection."""

    def __init__(self, heads: int = 12) -> None:
        super().__init__()
        self.heads = heads
        self.attention = ASTSelfAttention()
        self.output = Dense(DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        """`x` (N, L, D) -> (N, L, D)."""
        split = (self.heads, DIM // self.heads)
        q, k, v = (
            lin(x).unflatten(-1, split).transpose(1, 2)  # (N, H, L, d)
            for lin in (self.attention.query, self.attention.key, self.attention.value)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, d)
        return self.output(out.transpose(1, 2).flatten(2))  # (N, L, D)


class ASTLayer(nn.Module):
    """A pre-norm ViT layer (HF ViTLayer): x + attn(LN(x)), then x + MLP(LN(x)), layer-norm eps 1e-12."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = ASTAttention()
        self.intermediate = Dense(DIM, 4 * DIM)
        self.output = Dense(4 * DIM, DIM)
        self.layernorm_before = nn.LayerNorm(DIM, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(DIM, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.layernorm_before(x))  # (N, L, D)
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))  # (N, L, D)


class ASTEncoder(nn.Module):
    """The stack of AST layers."""

    def __init__(self, depth: int = 12) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ASTLayer() for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x)  # (N, L, D)
        return x


class ASTModel(nn.Module):
    """AST's body: embeddings, encoder, final layernorm (its `last_hidden_state`)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = ASTEmbeddings()
        self.encoder = ASTEncoder()
        self.layernorm = nn.LayerNorm(DIM, eps=1e-12)

    def forward(self, mel: Tensor) -> Tensor:
        """`mel` (N, 128, 66) -> (N, 74, D)."""
        return self.layernorm(self.encoder(self.embeddings(mel)))


class AST(nn.Module):
    """The audio encoder: AST's last hidden state without its two aux tokens, regrouped to 12 frequency x 6 time
    patches, one vector per time step (freq_attn_agg over its 12 frequency patches)."""

    def __init__(self) -> None:
        super().__init__()
        self.ast = ASTModel()
        self.freq_attn_agg = ClsPool(DIM, heads=12)

    def forward(self, mel: Tensor) -> Tensor:
        """`mel` (N, 128, 66) normalised log-mel of N segments -> (N, 6, D)."""
        n = mel.shape[0]
        x = self.ast(mel)[:, 2:]  # (N, 72, D), index f*6 + t
        x = x.unflatten(1, (12, 6)).transpose(1, 2)  # (N, 6, 12, D): time steps x frequency patches
        return self.freq_attn_agg(x.reshape(n * 6, 12, DIM)).view(n, 6, DIM)  # (N, 6, D)
