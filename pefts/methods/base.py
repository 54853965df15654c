"""The one interface every PEFTSmoothing method implements.

A method wraps a base classifier into the model that is fine-tuned and certified,
says which parameters train, and saves and loads only those. The training loop, the
certifier and the pipeline never branch on a method's name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from pefts.errors import PeftsError
from pefts.hparams import Param, check_hparams
from pefts.models.classifier import PixelClassifier
from pefts.training.loop import TrainConfig, train_noisy


class Method:
    """Base class: subclasses set ``name``, ``defaults`` and ``specs`` and implement ``build``.

    ``specs`` declares every hyper-parameter of ``defaults`` (``pefts.hparams``: ``Int``,
    ``Float``, ``Choice``, ``BOOL``); a class whose specs do not cover its defaults is
    refused when it is defined, and every value is checked in ``__init__``, before
    ``build`` hands it to a library.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    specs: ClassVar[dict[str, Param]] = {}
    trains: ClassVar[bool] = True
    # whether the classifier head trains, so a base trained on other classes can be adapted
    trains_head: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if set(cls.specs) != set(cls.defaults):
            raise TypeError(f"method {cls.__name__}: specs must declare exactly the "
                            f"hyper-parameters of defaults ({sorted(cls.defaults)}), "
                            f"got {sorted(cls.specs)}")
        check_hparams(getattr(cls, "name", cls.__name__), cls.specs, cls.defaults)

    def keeps_base_head(self) -> bool:
        """Whether the model answers with the base classifier's own head, so it serves
        only the base's classes (a query model with heads of its own serves any)."""
        return not self.trains_head

    def __init__(self, **hparams: Any):
        check_hparams(self.name, self.specs, hparams)
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}
        # the task's readable class names, set by build_model for methods that read them
        self.class_names: list[str] | None = None

    def build(self, base: PixelClassifier) -> nn.Module:
        """Return the model to fine-tune and certify ([0,1] images -> logits), with
        requires_grad set on exactly the parameters this method trains."""
        raise NotImplementedError

    def fit(self, model: nn.Module, data: Dataset, sigma: float, cfg: TrainConfig,
            device: torch.device | str) -> dict[str, Any]:
        """Fine-tune on noisy data; the default is cross-entropy on x + d (paper Eq. 4)."""
        return train_noisy(model, data, sigma, cfg, device, desc=f"{self.name} sigma={sigma}")

    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Only what this method trained, so a LoRA run of ViT-B/16 stays small on disk."""
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def frozen_parts(self, model: nn.Module) -> dict[str, int]:
        """Frozen networks this method adds around or instead of the base, by name: a
        denoiser or encoder pretrained elsewhere, a queried model. The parameter table
        shows them apart from the trainable ones, because the paper's Table 2 counts the
        diffusion denoiser's."""
        return {}

    def frozen_parameters(self, model: nn.Module) -> int:
        return sum(self.frozen_parts(model).values())

    def load_trainable(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Copy saved tensors into the model, in place: ``trainable_state`` returns views of
        the model's own parameters and buffers, so every method loads through it."""
        expected = self.trainable_state(model)
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise PeftsError(
                f"saved {self.name} weights do not fit the model: "
                f"missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, value in state.items():
            if expected[key].shape != value.shape:
                raise PeftsError(
                    f"saved {self.name} weight {key} has shape {tuple(value.shape)}, "
                    f"model expects {tuple(expected[key].shape)}"
                )
        with torch.no_grad():
            for key, value in state.items():
                expected[key].copy_(value)

def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def unfreeze_head(base: PixelClassifier) -> None:
    """Every PEFT method keeps the classifier head trainable (the paper's setting)."""
    for p in base.net.get_classifier().parameters():
        p.requires_grad_(True)
