"""Simulated multi-speaker data: conversations (diarization) and short mixtures (routing/separation).

Both are built per split from that split's own speakers, deterministically for a seed, and stored as
a few audio shards plus Parquet tables (and one RTTM/UEM per conversation set).
"""
from echo.simulate.conversations import ConversationConfig, ConversationSet, simulate_conversations
from echo.simulate.mixtures import MixtureConfig, MixtureSet, simulate_mixtures
from echo.simulate.room import RoomConfig

__all__ = ["ConversationConfig", "ConversationSet", "simulate_conversations",
           "MixtureConfig", "MixtureSet", "simulate_mixtures", "RoomConfig"]
