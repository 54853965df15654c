"""Diffusion models as their authors released them: the ADM UNet of guided-diffusion and
improved-diffusion (unet), the released checkpoints and their noise schedules
(releases, schedules), and loading a fetched checkpoint key for key (loading)."""
