"""PyTorch generator: a VAE to a 4x32x32 latent and a mask-conditioned latent DDPM.

Entry points: `python -m generation_torch.train`, `.sample`, `.evaluate`. The noise schedule and the
sampler updates live in `shared.diffusion` (shared with the onnxruntime sampler).
"""
