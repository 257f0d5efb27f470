"""Models: the ViT audio encoder, JEPA pretraining pieces and their masks."""
from echo.models.jepa import JEPA, Predictor, PredictorConfig
from echo.models.masks import MaskCollator, MaskConfig
from echo.models.vit import Encoder, EncoderConfig, EncoderOutput

__all__ = ["Encoder", "EncoderConfig", "EncoderOutput", "JEPA", "Predictor", "PredictorConfig",
           "MaskCollator", "MaskConfig"]
