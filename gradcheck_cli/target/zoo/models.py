"""The built-in models: each one a small, seeded demonstration of one gradient behaviour.

Every class here is a zero-argument ``nn.Module`` with two static methods:

- ``make_batch(batch_size)`` -> ``(inputs, target)``, drawn from the global torch RNG (the caller
  seeds it before every call; nothing here seeds it);
- ``loss_fn(output, target)`` -> a scalar tensor.

Build them through :func:`build`, which seeds the initialisation with :data:`BUILD_SEED` and
restores the caller's RNG state afterwards, so every build is identical.

Each docstring states the behaviour, the mechanism (its page under docs/findings or docs/fixes) and the
numbers measured with plain autograd (``loss.backward()``, then ``weight.grad.norm()`` per
Linear/Conv layer; batch of 16 drawn after ``torch.manual_seed(0)``). "first/last" is the first
weight layer's gradient norm divided by the last one's (the head).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

BUILD_SEED = 0
"""Seed of every build: the same builtin always starts from the same weights."""


def build(factory: type[nn.Module]) -> nn.Module:
    """A fresh, deterministically initialised instance; the global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BUILD_SEED)
        return factory()


# --------------------------------------------------------------------------- shared pieces


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


MLP_IN = 32
MLP_WIDTH = 32
MLP_CLASSES = 10


def _mlp_batch(batch_size: int, in_features: int = MLP_IN) -> tuple[torch.Tensor, torch.Tensor]:
    # The label is a fixed function of the input (the largest of the first MLP_CLASSES
    # features), so the task is learnable when a scan takes optimizer steps.
    x = torch.randn(batch_size, in_features)
    return x, x[:, :MLP_CLASSES].argmax(dim=1)


class _MLP(nn.Module):
    """``depth`` Linear layers of width MLP_WIDTH with ``activation`` between them."""

    def __init__(self, depth: int, activation: type[nn.Module], bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width_in = MLP_IN
        for _ in range(depth - 1):
            layers += [nn.Linear(width_in, MLP_WIDTH, bias=bias), activation()]
            width_in = MLP_WIDTH
        layers.append(nn.Linear(width_in, MLP_CLASSES, bias=bias))
        self.net = nn.Sequential(*layers)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    make_batch = staticmethod(_mlp_batch)
    loss_fn = staticmethod(_cross_entropy)


# --------------------------------------------------------------------------- MLPs


class DeepSigmoidMLP(_MLP):
    """deep-sigmoid: 10 Linear layers (width 32) with sigmoid between them, PyTorch default init.

    Behaviour: vanishing. Mechanism (docs/findings/saturated-activation.md): sigmoid'(x) <= 0.25,
    and the default init (U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)) has a backward gain of about
    0.58, so each layer divides the gradient by about 7 on its way to the input
    (Glorot & Bengio 2010).
    Measured: (seed 0) weight-gradient norms from the first layer to the head
    2.8e-08, 1.1e-07, 7.4e-07, 5.0e-06, 3.8e-05, 3.1e-04, 2.7e-03, 0.018, 0.11, 0.75: a factor
    6-9 per layer; first/last 3.8e-08 (3.3e-08 to 3.9e-08 over seeds 0-2). Loss 2.27 (ln 10).
    """

    def __init__(self) -> None:
        super().__init__(depth=10, activation=nn.Sigmoid)


class ReluHeMLP(_MLP):
    """relu-he: 10 Linear layers (width 32) with ReLU, He init (kaiming_normal_, zero bias).

    Behaviour: healthy. Mechanism (docs/fixes/he-init.md): Var(w) = 2/fan_in exactly compensates
    the half of the units that ReLU zeroes, so the activation and gradient scales are preserved
    through depth (He et al. 2015).
    Measured: (seed 0) weight-gradient norms 2.9, 3.6, 4.5, 5.1, 8.6, 7.9, 7.0, 6.7, 6.4,
    6.7 (head); first/last 0.44 (0.44 to 0.63 over seeds 0-2); grad/weight 0.4 to 1.3. Loss 4.2.
    """

    def __init__(self) -> None:
        super().__init__(depth=10, activation=nn.ReLU)
        for layer in self.linears():
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


class ReluNormalInitMLP(_MLP):
    """relu-normal-init: the relu-he network with weights drawn from N(0, 1), zero bias.

    Behaviour: exploding. Mechanism (docs/findings/init-scale.md, too large): with Var(w) = 1 instead
    of 2/fan_in, activations and gradients grow by about sqrt(fan_in / 2) = 4 per layer.
    Measured: (seed 0) loss 3.9e+06 (relu-he: 4.2); weight-gradient norms 8.5e+05 to
    2.8e+06 (relu-he: 2.9 to 8.6), i.e. ~3e+05 times larger; grad/weight 3e+04 to 1e+05. The
    first/last ratio stays near 1 (0.38): in dW = delta h^T the backward growth (towards the
    input) and the forward growth (towards the output) multiply to the same ~4^9 at every layer,
    so the signature is the absolute scale, not a profile over depth.
    """

    def __init__(self) -> None:
        super().__init__(depth=10, activation=nn.ReLU)
        for layer in self.linears():
            nn.init.normal_(layer.weight, mean=0.0, std=1.0)
            nn.init.zeros_(layer.bias)


class TanhTinyInitMLP(_MLP):
    """tanh-tiny-init: 8 Linear layers (width 32, no bias) with tanh, weights 0.01 * N(0, 1).

    Behaviour: vanishing. Mechanism (docs/findings/init-scale.md, too small): each layer scales the
    activations by about 0.01 * sqrt(fan_in) = 0.057 on the way forward and the gradient by the
    same factor on the way back, so every weight gradient (the product of the two) is uniformly
    tiny. tanh stays in its linear region here: the problem is the init, not saturation.
    The layers have no bias, as a bias gradient would not shrink with the activations.
    Measured: (seed 0) every weight-gradient norm between 2.3e-09 and 2.7e-09 (first/last
    1.1); grad/weight about 1e-08; the logits are ~0, so the loss is ln 10 = 2.303.
    """

    def __init__(self) -> None:
        super().__init__(depth=8, activation=nn.Tanh, bias=False)
        for layer in self.linears():
            with torch.no_grad():
                layer.weight.normal_().mul_(0.01)


# --------------------------------------------------------------------------- recurrent

SEQ_LEN = 100
SEQ_FEATURES = 8
SEQ_HIDDEN = 32
SEQ_CLASSES = 4


def _remember_first_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # "Remember the first step": the label depends only on the first time step, so the only
    # useful gradient has to travel back through all SEQ_LEN steps.
    x = torch.randn(batch_size, SEQ_LEN, SEQ_FEATURES)
    return x, x[:, 0, :SEQ_CLASSES].argmax(dim=1)


class RnnLong(nn.Module):
    """rnn-long: a vanilla tanh nn.RNN (hidden 32) over 100 steps, loss on the last step only.

    W_hh is rescaled to spectral radius 0.5. Behaviour: vanishing (through time). Mechanism
    (docs/findings/vanishing-through-time.md): the gradient reaching step t is multiplied by
    W_hh^T diag(tanh') once per later step; with tanh' <= 1 that shrinks it by the spectral
    radius (0.5) per step in the long run, so the first steps receive nothing (Pascanu, Mikolov
    & Bengio 2013). The label depends on the first step only, which the RNN cannot learn.
    Measured: (seeds 0-2) largest singular value of W_hh 0.93 (< 1 = 1/max tanh', Pascanu's
    sufficient condition). |dL/dx_t| is 0.03 at the last step, 1e-03 of that 10 steps earlier,
    6e-18 of it at step 50 and 3e-35 at step 0 (float64 norm; a float32 norm of the step-0
    gradient, ~1e-37 per element, underflows to 0): a factor ~0.45 per step. The layers' own
    gradient norms look normal (rnn 0.55, head 0.5): only the per-step profile shows it.
    """

    spectral_radius = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(SEQ_FEATURES, SEQ_HIDDEN, batch_first=True)
        self.head = nn.Linear(SEQ_HIDDEN, SEQ_CLASSES)
        with torch.no_grad():
            w = cast(torch.Tensor, self.rnn.weight_hh_l0)
            w.mul_(self.spectral_radius / torch.linalg.eigvals(w).abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    make_batch = staticmethod(_remember_first_batch)
    loss_fn = staticmethod(_cross_entropy)


class Lstm(nn.Module):
    """lstm: an nn.LSTM (hidden 32) over the same 100 steps, loss on the last step only.

    Behaviour: healthy. Mechanism (docs/fixes/gated-rnn.md): the cell state is updated additively,
    c_t = f_t * c_{t-1} + i_t * g_t, so the gradient through time is scaled by the forget gate f_t
    rather than by W_hh (Hochreiter & Schmidhuber 1997). The forget-gate bias starts at 3 (the
    usual positive "forget bias" init, Gers et al. 2000, Jozefowicz et al. 2015), so f_t starts
    near sigmoid(3) = 0.95 and the first step is still remembered 100 steps later.
    Measured: (seeds 0-2) |dL/dx_0| / |dL/dx_99| = 0.20, 0.11, 0.17 (rnn-long: 3e-35). The
    same ratio with forget bias 0, 1, 2, 3: 0 (underflow), 5e-09, 3.5e-03, 0.1-0.2.
    """

    forget_bias = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(SEQ_FEATURES, SEQ_HIDDEN, batch_first=True)
        self.head = nn.Linear(SEQ_HIDDEN, SEQ_CLASSES)
        with torch.no_grad():
            # PyTorch orders the gates (input, forget, cell, output) along dim 0.
            forget = slice(SEQ_HIDDEN, 2 * SEQ_HIDDEN)
            bias_ih = cast(torch.Tensor, self.lstm.bias_ih_l0)
            bias_hh = cast(torch.Tensor, self.lstm.bias_hh_l0)
            bias_ih[forget].fill_(self.forget_bias)
            bias_hh[forget].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])

    make_batch = staticmethod(_remember_first_batch)
    loss_fn = staticmethod(_cross_entropy)


# --------------------------------------------------------------------------- CNNs

IMAGE_CHANNELS = 3
IMAGE_SIZE = 16
CNN_WIDTH = 16
CNN_CLASSES = 4
CNN_CONVS = 13


def _image_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The label is the brightest quadrant of the first channel: learnable, and it needs the
    # spatial layout.
    x = torch.randn(batch_size, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    half = IMAGE_SIZE // 2
    quadrants = x[:, 0].unfold(1, half, half).unfold(2, half, half).mean(dim=(-1, -2))
    return x, quadrants.reshape(batch_size, 4).argmax(dim=1)


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=bias)


class PlainDeepCNN(nn.Module):
    """cnn-plain-deep: 13 3x3 conv layers (16 channels) with sigmoid, no normalization, no skip.

    Behaviour: vanishing. Mechanism (docs/findings/vanishing.md, depth without a short
    path, and docs/findings/saturated-activation.md): each conv + sigmoid multiplies the
    gradient by about 0.58 * 0.25, with no path around it, so the gradient decays geometrically
    from the head to the input while the activations keep their scale (sigmoid outputs stay
    around 0.5).
    Measured: (seed 0) conv weight-gradient norms from the first conv to the last
    3.2e-13, 4.1e-11, 4.6e-10, 4.1e-09, 2.6e-08, 2.5e-07, 1.7e-06, 1.3e-05, 8.2e-05, 5.1e-04,
    4.4e-03, 0.037, 0.24, then 0.67 for the head: a factor 7-10 per layer; first conv / last conv
    1.3e-12, first conv / head 4.7e-13 (4.7e-13 to 7.6e-13 over seeds 0-2).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(IMAGE_CHANNELS, CNN_WIDTH), nn.Sigmoid()]
        for _ in range(CNN_CONVS - 1):
            layers += [_conv(CNN_WIDTH, CNN_WIDTH), nn.Sigmoid()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(CNN_WIDTH, CNN_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))

    make_batch = staticmethod(_image_batch)
    loss_fn = staticmethod(_cross_entropy)


class ResidualBlock(nn.Module):
    """y = relu(x + BN(conv(relu(BN(conv(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(channels, channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv(channels, channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(x + y)


class ResNetBN(nn.Module):
    """cnn-resnet-bn: the same 13 conv layers as cnn-plain-deep, as a stem + 6 residual blocks
    with BatchNorm.

    Behaviour: healthy. Mechanism (docs/fixes/add-skip.md, docs/fixes/add-normalization.md): the identity
    path of each block carries the gradient with factor 1 (He et al. 2016), and BatchNorm keeps
    every layer's activation scale fixed (Ioffe & Szegedy 2015).
    Measured: (seed 0) conv weight-gradient norms stem 0.39, then 0.62 down to 0.20
    for the last conv, head 4.8; first conv / last conv 1.95, first conv / head 0.082 (0.082 to
    0.094 over seeds 0-2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(IMAGE_CHANNELS, CNN_WIDTH, bias=False)
        self.stem_bn = nn.BatchNorm2d(CNN_WIDTH)
        blocks = (CNN_CONVS - 1) // 2
        self.blocks = nn.Sequential(*(ResidualBlock(CNN_WIDTH) for _ in range(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(CNN_WIDTH, CNN_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem_bn(self.stem(x))))
        return self.head(self.pool(x).flatten(1))

    make_batch = staticmethod(_image_batch)
    loss_fn = staticmethod(_cross_entropy)


# --------------------------------------------------------------------------- transformer

VOCAB = 32
CONTEXT = 16
D_MODEL = 32
N_HEADS = 4
N_BLOCKS = 2


def _next_token_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Arithmetic sequences modulo VOCAB (random start and stride): the next token is
    # predictable from the two before it, so the task is learnable.
    start = torch.randint(0, VOCAB, (batch_size, 1))
    stride = torch.randint(1, VOCAB, (batch_size, 1))
    tokens = (start + stride * torch.arange(CONTEXT + 1)) % VOCAB
    return tokens[:, :-1], tokens[:, 1:]


class PreLNBlock(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)), with a causal mask."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.attn = nn.MultiheadAttention(D_MODEL, N_HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(
            nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class PreLNTransformer(nn.Module):
    """transformer-preln: a 2-block pre-LN causal transformer (d=32, 4 heads) with a head tied
    to the token embedding, trained on next-token prediction.

    Behaviour: healthy. Mechanism (docs/fixes/add-skip.md, docs/fixes/add-normalization.md): in a pre-LN
    block the residual stream is never normalised, so every block has an identity path for the
    gradient, and LayerNorm keeps each sub-layer's input at unit scale. The head shares its weight
    with ``embed`` (tied weights: one parameter, two modules).
    Measured: (seed 0) loss 3.47 (ln 32 = 3.47); Linear weight-gradient norms
    0.029 to 0.088 (attention out_proj and MLP), tied head/embedding 0.48; first/last 0.14 (0.14
    to 0.17 over seeds 0-2); LayerNorm gradients 0.004 to 0.02.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.Sequential(*(PreLNBlock() for _ in range(N_BLOCKS)))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        with torch.no_grad():
            # Tied to the head, a unit-variance embedding would give logits of std ~sqrt(32)
            # at init; GPT-2 initialises its embeddings with std ~0.02.
            self.embed.weight.normal_(0.0, 0.02)
            self.pos.weight.normal_(0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        return self.head(self.ln_f(self.blocks(x)))

    @staticmethod
    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _next_token_batch(batch_size)

    @staticmethod
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


# --------------------------------------------------------------------------- non-finite


class Log(nn.Module):
    """torch.log as a module (no parameters): the unsafe op, so a hook can point at it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class NanLog(nn.Module):
    """nan-log: Linear -> log -> Linear, where the log's input (a Linear output) can be negative.

    Behaviour: nonfinite. Mechanism (docs/findings/nonfinite.md): log of a negative
    number is NaN (and log(0) is -inf); the NaN propagates to the output, the loss and every
    gradient. ``log`` is the first module whose output is non-finite while its input was finite.
    The fix is a guard (e.g. ``torch.log(F.softplus(x) + eps)``, or log1p of a clamped value).
    Measured: (seed 0) 54% of the log's inputs are negative; the output, the loss and
    100% of every gradient element (encoder and head) are NaN.
    """

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(16, 16)
        self.log = Log()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.log(self.encoder(x)))

    @staticmethod
    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, 16)
        return x, x.sum(dim=1, keepdim=True)

    loss_fn = staticmethod(_mse)

