"""The networks: the pixel-space classifier around a timm backbone, the black box's
prompt generator and CLIP, the diffusion denoiser's UNet."""
