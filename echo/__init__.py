"""Echo: one JEPA-pretrained ViT audio encoder; speaker, phonetic and routing heads on a shared latent."""

__version__ = "0.1.0"
