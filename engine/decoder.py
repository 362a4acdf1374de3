"""The DeepSDF decoder ``f(z, x) -> sdf``: an MLP with the code re-injected at a skip layer.

Imports only torch. Layout and numbers follow Park et al. (CVPR 2019) and the
reference implementation, so reference checkpoints load unchanged (see
``deepsdf_format.py``):

* input row ``[z (code_length), x, y, z]`` — code first, xyz last;
* the layer *before* a skip layer outputs ``width - (code_length + 3)`` features,
  which are concatenated with the original input (so the skip layer takes ``width``);
* ReLU then dropout on the hidden layers (training only), weight norm on
  ``norm_layers`` (or LayerNorm there when weight norm is off);
* the output always goes through ``tanh`` (``inner_tanh`` adds the reference's
  optional second one).

Points are in the model frame: the normalised unit sphere, y up, the shape
inside radius ~0.97. SDF is negative inside.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize


@dataclass(frozen=True)
class DecoderConfig:
    """Everything needed to rebuild a decoder; stored inside every model file."""

    code_length: int = 256
    """Length of a shape code. 256 in the paper for every class."""
    hidden_dims: tuple[int, ...] = (512,) * 8
    """Width of each hidden layer; a final ``-> 1`` layer follows. Paper: 8 x 512."""
    skip_layers: tuple[int, ...] = (4,)
    """Layers whose input is ``[previous, z, xyz]`` (the paper's latent_in)."""
    norm_layers: tuple[int, ...] | None = None
    """Layers with weight norm (or LayerNorm when ``weight_norm`` is False); None: every hidden layer."""
    weight_norm: bool = True
    """Weight normalisation (Salimans & Kingma) on ``norm_layers``, as in the paper."""
    dropout_layers: tuple[int, ...] | None = None
    """Hidden layers followed by dropout during training; None: every hidden layer."""
    dropout_prob: float = 0.2
    """Dropout probability in training (the paper's 0.2); inference never drops."""
    xyz_in_all: bool = False
    """Reference option: append xyz to every hidden layer's input. Off in the paper."""
    latent_dropout: bool = False
    """Reference option: dropout on the code in training. Off in the paper."""
    inner_tanh: bool = False
    """Reference ``use_tanh``: an extra tanh before the final one. Off in the paper."""

    def __post_init__(self) -> None:
        n = len(self.hidden_dims)
        for name in ("norm_layers", "dropout_layers"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, tuple(range(n)))
        if self.code_length < 0:
            raise ValueError("code_length must be >= 0")
        if n < 1:
            raise ValueError("hidden_dims needs at least one layer")
        for s in self.skip_layers:
            if not 1 <= s < n:
                raise ValueError(f"skip layer {s} must be in [1, {n - 1}]")
            reduced = self.hidden_dims[s - 1] - self.input_dim
            if reduced <= 0:
                raise ValueError(f"layer {s - 1} is too narrow for a skip of {self.input_dim} inputs")
        for name in ("norm_layers", "dropout_layers"):
            for i in getattr(self, name):
                if not 0 <= i < n:
                    raise ValueError(f"{name} entry {i} outside [0, {n - 1}]")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError("dropout_prob must be in [0, 1)")

    @property
    def input_dim(self) -> int:
        """Width of one input row: code plus xyz."""
        return self.code_length + 3

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown decoder config keys: {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


def _small_config() -> DecoderConfig:
    return DecoderConfig(code_length=64, hidden_dims=(256,) * 6, skip_layers=(3,))


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # Exactly the reference: 1,843,195 parameters, 3.67 MFLOP per point.
    "paper": DecoderConfig(),
    # Interactive on a laptop CPU: 6 x 256, code 64, skip at 3. About 295k
    # parameters and 0.29 MFLOP per point (~12x fewer than `paper`), so a
    # 128^3 narrow-band mesh or a 200-step fit takes about a second on 2 cores.
    # A single class of a few hundred shapes does not need the paper's capacity.
    "small": _small_config(),
}


def decoder_preset(name: str) -> DecoderConfig:
    """The named decoder configuration (``"paper"`` or ``"small"``)."""
    try:
        return DECODER_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown decoder preset {name!r}; choose {sorted(DECODER_PRESETS)}") from None


class Decoder(nn.Module):
    """DeepSDF decoder ``f(z, x)``.

    Parameters are named ``lin{i}`` like the reference (``weight``/``bias``, with
    weight norm as a parametrization). Two equivalent forwards:

    * :meth:`forward` takes rows ``[z, xyz]`` like the reference (used in training);
    * :meth:`forward_codes` takes one code per batch entry and folds the code's
      contribution to layer 0 and the skip layers into a per-code bias, so the
      code is never repeated per point (14 % fewer FLOPs; used for fitting and
      meshing).
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dims = [c.input_dim, *c.hidden_dims, 1]
        n_lin = len(dims) - 1
        self.num_linear = n_lin
        for i in range(n_lin):
            out_dim = dims[i + 1]
            if i + 1 in c.skip_layers:
                out_dim -= c.input_dim
            elif c.xyz_in_all and i != n_lin - 1:
                out_dim -= 3
            in_dim = dims[i]
            lin = nn.Linear(in_dim, out_dim)
            if c.weight_norm and i in c.norm_layers:
                lin = parametrizations.weight_norm(lin, name="weight", dim=0)
            setattr(self, f"lin{i}", lin)
            if not c.weight_norm and i in c.norm_layers and i < n_lin - 1:
                setattr(self, f"ln{i}", nn.LayerNorm(out_dim))

    # -- helpers ---------------------------------------------------------
    def linear(self, i: int) -> nn.Linear:
        return getattr(self, f"lin{i}")

    def _hidden_post(self, i: int, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not c.weight_norm and i in c.norm_layers:
            x = getattr(self, f"ln{i}")(x)
        x = F.relu(x)
        if self.training and c.dropout_prob > 0 and i in c.dropout_layers:
            x = F.dropout(x, p=c.dropout_prob, training=True)
        return x

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.inner_tanh:
            x = torch.tanh(x)
        return torch.tanh(x)

    # -- forwards --------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """SDF for rows ``[z, x, y, z]``.

        inputs: (..., code_length + 3) float, model frame. Returns (..., 1).
        """
        c = self.config
        xyz = inputs[..., -3:]
        x = inputs
        if c.latent_dropout and self.training and c.code_length > 0:
            code = F.dropout(inputs[..., :-3], p=0.2, training=True)
            x = torch.cat([code, xyz], dim=-1)
        first = x
        last = self.num_linear - 1
        for i in range(self.num_linear):
            if i in c.skip_layers:
                x = torch.cat([x, first], dim=-1)
            elif i != 0 and c.xyz_in_all:
                x = torch.cat([x, xyz], dim=-1)
            x = self.linear(i)(x)
            if i < last:
                x = self._hidden_post(i, x)
        return self._output(x)

    def code_biases(self, codes: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per-code constant added by layer 0 and each skip layer.

        codes: (b, code_length). Returns ``{layer: (b, out_dim)}``: ``W_z z + bias``.
        """
        c = self.config
        out = {}
        for i in (0, *c.skip_layers):
            lin = self.linear(i)
            w = lin.weight
            start = 0 if i == 0 else w.shape[1] - c.input_dim
            w_z = w[:, start : start + c.code_length]
            out[i] = F.linear(codes, w_z, lin.bias)
        return out

    def forward_codes(
        self,
        codes: torch.Tensor,
        xyz: torch.Tensor,
        biases: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """SDF of ``b`` shapes at their own points, the code folded into biases.

        codes: (b, code_length) float. xyz: (b, n, 3) float, model frame.
        biases: optional result of :meth:`code_biases` (reuse it across chunks).
        Returns (b, n) float. Equal to :meth:`forward` on ``[codes[j], xyz[j, k]]``
        (with ``latent_dropout`` ignored: use :meth:`forward` to train with it).
        """
        c = self.config
        if biases is None:
            biases = self.code_biases(codes)
        last = self.num_linear - 1
        x = xyz
        for i in range(self.num_linear):
            lin = self.linear(i)
            w = lin.weight
            if i == 0:
                x = F.linear(xyz, w[:, -3:]) + biases[0].unsqueeze(1)
            elif i in c.skip_layers:
                n_prev = w.shape[1] - c.input_dim
                x = F.linear(x, w[:, :n_prev]) + F.linear(xyz, w[:, -3:]) + biases[i].unsqueeze(1)
            elif c.xyz_in_all:
                x = lin(torch.cat([x, xyz], dim=-1))
            else:
                x = lin(x)
            if i < last:
                x = self._hidden_post(i, x)
        return self._output(x).squeeze(-1)

    @torch.no_grad()
    def sdf(self, code: torch.Tensor, xyz: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """SDF of one shape at many points, in chunks; no autograd.

        code: (code_length,). xyz: (n, 3), model frame. Returns (n,).
        """
        codes = code.reshape(1, -1)
        with parametrize.cached():
            biases = self.code_biases(codes)
            parts = [
                self.forward_codes(codes, xyz[s : s + chunk].unsqueeze(0), biases)[0] for s in range(0, len(xyz), chunk)
            ]
        return torch.cat(parts) if parts else xyz.new_zeros(0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_point(self) -> int:
        """Multiply-adds x 2 for one point with the code folded (forward only)."""
        total = 0
        c = self.config
        for i in range(self.num_linear):
            w = self.linear(i).weight
            cols = w.shape[1] - (c.code_length if i == 0 or i in c.skip_layers else 0)
            total += 2 * w.shape[0] * cols
        return total
