"""BlackVIP's coordinator and the prompted black-box classifier it feeds."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pefts.models.blackbox.encoder import CONV, build_encoder
from pefts.models.blackbox.query import QueryModel

# BlackVIP's DecoderManual for a ViT-B encoder (trainers/visual_prompters.py): the
# channels after each upsampling stage; with a 7 x 7 start, five stages reach 224
BLACKVIP_WIDTHS = (64, 64, 32, 32, 16)


def blackvip_decoder(in_channels: int, widths: tuple[int, ...] | list[int],
                     out_channels: int) -> nn.Sequential:
    """BlackVIP's decoder: stage 0 a grouped 2x2 stride-2 ConvTranspose2d to widths[0]
    (groups = gcd of the two widths: BlackVIP's min(channels, 64) at their sizes); each
    later stage a depthwise one; every stage then a 1x1 ConvTranspose2d without bias to
    the next width, BatchNorm2d and GELU; last a plain 2x2 stride-2 ConvTranspose2d to
    the image's channels without bias and without an output activation. len(widths)
    upsamplings in all."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width, following in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.ConvTranspose2d(channels, width, 2, 2, 0, groups=math.gcd(channels, width)),
                   nn.ConvTranspose2d(width, following, kernel_size=1, bias=False),
                   nn.BatchNorm2d(following), nn.GELU()]
        channels = following
    layers.append(nn.ConvTranspose2d(channels, out_channels, 2, 2, 0, bias=False))
    return nn.Sequential(*layers)


class Coordinator(nn.Module):
    """Frozen encoder -> features z; learnable decoder g(z, trigger) -> prompt.

    BlackVIP's design: the encoder's feature vector (an MAE ViT-B/16's CLS token of the
    last hidden state, 768-d) is concatenated with a learnable trigger (800, init
    U(0, 0.1)) and reshaped into a ``grid`` x ``grid`` map (768 + 800 = 32 x 7 x 7;
    zero-padded to fill it when the sizes do not divide); the decoder
    (``blackvip_decoder``) writes the prompt from it at grid * 2^len(widths) (224), and
    it is resized to the image only when the sizes differ. A conv encoder's feature map
    (pooled to ``grid``) gets the trigger as extra channels instead.

    The coordinator reads its input as given: BlackVIP feeds it the CLIP-normalised
    image (PromptedClassifier does). The encoder is never the base model: a fixed random
    conv drawn from ``seed`` (the embedded default) or a timm model (``encoder`` by
    name, weights from ``encoder_file`` or timm's pretrained ones); the decoder's initial
    weights are PyTorch's default initialisation drawn from ``seed``.
    """

    def __init__(self, image_channels: int = 3, features: int = 8, trigger: int = 8,
                 widths: tuple[int, ...] | list[int] = (16, 8), grid: int = 2, seed: int = 0,
                 encoder: str = CONV, encoder_file: str | None = None,
                 encoder_pretrained: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trigger = nn.Parameter(torch.rand(trigger, generator=gen) * 0.1)  # BlackVIP's U(0, 0.1)
        self.encoder = build_encoder(encoder, image_channels, features, grid, gen,
                                     encoder_file, encoder_pretrained)
        self.grid = grid
        self.vector = encoder != CONV  # a feature vector, not a feature map
        if self.vector:
            channels = math.ceil((self.encoder.out_features + trigger) / grid ** 2)
        else:
            channels = self.encoder.out_features + trigger
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.decoder = blackvip_decoder(channels, list(widths), image_channels)

    def learnable(self) -> list[nn.Parameter]:
        """The trigger and the decoder, in BlackVIP's order (SPSA flattens them into one
        vector as their parameters_to_vector(coordinator.dec.parameters()) does)."""
        return [self.trigger, *self.decoder.parameters()]

    def statistics(self) -> dict[str, torch.Tensor]:
        """The decoder's BatchNorm running statistics: trained along (every forward in
        training mode updates them) and used in evaluation, so saved with the weights."""
        return {f"decoder.{name}": b for name, b in self.decoder.named_buffers()}

    def train(self, mode: bool = True) -> Coordinator:
        super().train(mode)
        self.encoder.eval()  # frozen: its dropout and norm statistics never change
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's features: the same for every prompt SPSA tries on x."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The prompt from the encoder's features ``z`` and the trigger, at ``size``."""
        n = len(z)
        if self.vector:
            v = torch.cat([z.to(self.trigger.dtype), self.trigger.expand(n, -1)], dim=1)
            cells = self.decoder[0].in_channels * self.grid ** 2
            h = F.pad(v, (0, cells - v.shape[1])).view(n, -1, self.grid, self.grid)
        else:
            trigger = self.trigger.view(1, -1, 1, 1).expand(n, -1, *z.shape[-2:])
            h = torch.cat([z.to(trigger.dtype), trigger], dim=1)
        h = self.decoder(h)
        if tuple(h.shape[-2:]) != tuple(size):
            # in fp32: under bf16 autocast the map is bf16, and torch's CPU antialiased
            # resize has no bf16 kernel
            h = F.interpolate(h.float(), size=size, mode="bilinear", align_corners=False,
                              antialias=h.shape[-1] > size[-1])
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[-2:]))


class Frame(nn.Module):
    """The image the prompt is written on: the black box's own input (CLIP: 224 x 224,
    CLIP-normalised). [0,1] images at native resolution are resized to it (bicubic, as
    CLIP's and BlackVIP's preprocessing) and normalised; ``clip`` is BlackVIP's
    clip_clipping, the normalised image of the [0, 1] pixel range."""

    def __init__(self, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.size = tuple(size)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.mean.shape[1]:
            x = x.expand(-1, self.mean.shape[1], -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False,
                              antialias=x.shape[-1] > self.size[-1])
        return (x - self.mean) / self.std

    def clip(self, u: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(u, (1 - self.mean) / self.std), -self.mean / self.std)

    def pixels(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.std + self.mean


class PromptedClassifier(nn.Module):
    """z -> log P(y | prompted(z)) through the query interface only, where (BlackVIP's
    CustomCLIP.forward) u = the frame's normalised image of z, prompted = clip(u + eps *
    h(u)) in that normalised space, handed to the black box as the [0,1] image it is.

    The prompt is computed from the noisy input z itself, so smoothing this module
    certifies x. Log-probabilities are returned as logits: softmax gives back the
    black box's probabilities and cross-entropy on them is the usual loss.
    """

    def __init__(self, coordinator: Coordinator, query: QueryModel, frame: Frame,
                 eps: float = 1.0, clip: bool = True):
        super().__init__()
        self.coordinator = coordinator
        self.query = query
        self.frame = frame
        self.eps = eps
        self.clip = clip

    def prepare(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised frame of z and its encoder features: what every prompt SPSA
        tries on the batch z shares."""
        u = self.frame.normalise(z)
        return u, self.coordinator.encode(u)

    def answer(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        prompted = u + self.eps * self.coordinator.decode(features, tuple(u.shape[-2:]))
        if self.clip:  # a prediction API takes valid images
            prompted = self.frame.clip(prompted)
        return torch.log(self.query(self.frame.pixels(prompted)).clamp_min(1e-12))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.answer(*self.prepare(z))
