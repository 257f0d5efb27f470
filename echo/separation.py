"""Speaker separation of whole recordings: one waveform per diarized speaker, of any length.

The separation stage's model (:meth:`echo.models.bundle.EchoModel.separate`: encoder and speaker
separator) renders the speakers whose identities it is given from a mixture of a few seconds. A
recording is separated in three steps:

1. diarize it with the :class:`~echo.diarization.diarizer.Diarizer` (the one ``echo diarize`` and
   the evaluation use), which gives the speakers of the whole recording, their activity and one
   unit speaker embedding each;
2. cut the waveform into consecutive chunks of ``chunk_s`` seconds (the training mixtures'
   length; the last chunk is zero-padded for the model and cropped back); a chunk where the
   diarization hears exactly one speaker is that speaker's as it is (the masks of one rendered
   speaker are 1), so the model only runs where two or more speakers, or none, are heard;
3. render, in each such chunk, the speakers the diarization hears there (every speaker when it
   hears nobody) from their embeddings. The identity is the same in every chunk, so speaker ``j``
   of one chunk is speaker ``j`` of the next with no linking step, and the masks sum to one over
   the rendered speakers, so the speakers' waveforms sum to the input.

Only one batch of chunks is in the model at a time, so memory does not grow with the recording
beyond the outputs themselves (S x samples float32, 230 MB per speaker-hour). The chunk loop is
hand-written: no separation library renders a diarization's speakers chunk by chunk.

Example::

    separator = Separator.from_pretrained("models/echo")
    out = separator("meeting.wav", num_speakers=2)
    for label, wave in zip(out.labels, out.sources):   # (N,) float32 at out.sample_rate
        ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from pyannote.core import Annotation

from echo.diarization.diarizer import Diarizer, DiarizeOutput
from echo.errors import EchoError
from echo.progress import Hook

__all__ = ["Separator", "SeparationOutput", "chunk_speech"]

NO_SEPARATOR = "no separator; expected a model from the separation stage (models/echo)"


@dataclass
class SeparationOutput:
    """A recording separated into its speakers.

    Attributes:
        sources: ``(S, N)`` float32, one waveform per speaker, rows in ``labels`` order, the
            input's length; they sum to the input.
        labels: the diarization's speaker labels (``spk0``, ``spk1``, ...).
        sample_rate: of ``sources`` (16000).
        diarization: the :class:`~echo.diarization.diarizer.DiarizeOutput` the speakers come from.
        warnings: the diarization's warnings, and any of the separation's own.
    """

    sources: np.ndarray
    labels: list[str]
    sample_rate: int
    diarization: DiarizeOutput
    warnings: list[str] = field(default_factory=list)


def chunk_speech(annotation: Annotation, labels: list[str], bounds: np.ndarray) -> np.ndarray:
    """``(C, S)`` seconds each speaker talks in each chunk.

    Args:
        annotation: the diarization.
        labels: the speakers, in output order.
        bounds: ``(C, 2)`` chunk start and end in seconds.
    """
    speech = np.zeros((len(bounds), len(labels)))
    for j, lab in enumerate(labels):
        for seg in annotation.label_timeline(lab):
            speech[:, j] += np.clip(np.minimum(seg.end, bounds[:, 1]) - np.maximum(seg.start, bounds[:, 0]), 0, None)
    return speech


class Separator:
    """One waveform per speaker of a 16 kHz recording (see the module docstring).

    Args:
        diarizer: a :class:`~echo.diarization.diarizer.Diarizer` whose model has a separator
            (the separation stage's ``models/echo``).
        chunk_s: seconds separated at once (> 0, finite); the training mixtures' length is best.
        batch_chunks: chunks per model call (>= 1); bounds memory.
    """

    def __init__(self, diarizer: Diarizer, chunk_s: float = 4.0, batch_chunks: int = 8):
        if getattr(diarizer.model, "separator", None) is None:
            raise EchoError(f"separate: the model (stage {diarizer.model.stage}) has {NO_SEPARATOR}")
        if not (np.isfinite(chunk_s) and chunk_s > 0):
            raise EchoError(f"separate chunk_s: expected finite seconds > 0, got {chunk_s:g}")
        if batch_chunks < 1:
            raise EchoError(f"separate batch_chunks: expected an integer >= 1, got {batch_chunks}")
        self.diarizer, self.model = diarizer, diarizer.model
        self.sample_rate = diarizer.frontend.sample_rate
        self.chunk_s, self.batch_chunks = float(chunk_s), int(batch_chunks)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu", chunk_s: float = 4.0,
                        **overrides) -> "Separator":
        """Load the folder the workflow writes (``models/echo``, :meth:`Diarizer.save`'s layout).

        Args:
            path: the folder.
            device: ``cpu`` or ``cuda``.
            chunk_s: seconds separated at once.
            overrides: :class:`~echo.diarization.diarizer.DiarizerConfig` fields to change.

        Raises:
            EchoError: missing files, or a model without a separator; CacheMismatchError: written
                by another version.
        """
        diarizer = Diarizer.from_pretrained(path, device=device, **overrides)
        if diarizer.model.separator is None:
            raise EchoError(f"{path}: {NO_SEPARATOR}")
        return cls(diarizer, chunk_s)

    def __call__(self, audio, num_speakers: int | None = None, min_speakers: int | None = None,
                 max_speakers: int | None = None, hook: Hook | None = None, uri: str | None = None) -> SeparationOutput:
        """Separate one recording into its speakers.

        Args:
            audio: what :class:`~echo.diarization.diarizer.Diarizer` takes: a file path,
                ``{"waveform": ..., "sample_rate": sr}``, a 16 kHz mono array or a
                :class:`~echo.diarization.diarizer.BlockReader` (read twice: diarization, separation).
            num_speakers, min_speakers, max_speakers: passed to the diarizer.
            hook: progress callback: the diarizer's steps, then ``hook("separate", completed=chunks
                done, total=chunks)``.
            uri: recording id.

        Returns:
            :class:`SeparationOutput`; with no speaker found, ``sources`` is ``(0, N)`` and a
            warning says so.
        """
        wave, uri = self.diarizer.read_audio(audio, uri)
        dia = self.diarizer(wave, num_speakers, min_speakers, max_speakers, hook=hook, uri=uri)
        n, warnings = len(wave), list(dia.warnings)
        sources = np.zeros((len(dia.labels), n), np.float32)
        if not dia.labels:
            warnings.append(f"separate {uri}: the diarization found no speaker; no sources")
        else:
            self._separate_into(wave, dia, sources, hook)
        return SeparationOutput(sources, list(dia.labels), self.sample_rate, dia, warnings)

    def _separate_into(self, wave, dia: DiarizeOutput, sources: np.ndarray, hook: Hook | None) -> None:
        n = len(wave)
        size = max(1, round(self.chunk_s * self.sample_rate))
        starts = np.arange(0, n, size)
        bounds = np.stack([starts, np.minimum(starts + size, n)], 1) / self.sample_rate
        active = chunk_speech(dia.speaker_diarization, dia.labels, bounds) > 0
        pending: list[tuple[int, np.ndarray]] = []  # (chunk, samples) waiting for a model batch
        # chunks are read in order (a streamed input is read once more, never backwards)
        for c, lo in enumerate(starts):
            piece = np.array(wave[lo:lo + size], np.float32)  # a copy: a BlockReader slice views its buffer
            if active[c].sum() == 1:
                # one speaker heard: their mask would be 1 everywhere, so the chunk is theirs
                # without running the model
                sources[np.flatnonzero(active[c])[0], lo:lo + len(piece)] = piece
            else:
                pending.append((c, piece))
            if len(pending) == self.batch_chunks or c == len(starts) - 1:
                self._render(pending, starts, size, active, dia.speaker_embeddings, sources)
                pending = []
                if hook is not None:
                    hook("separate", completed=c + 1, total=len(starts))

    def _render(self, pending, starts: np.ndarray, size: int, active: np.ndarray, speakers: np.ndarray,
                sources: np.ndarray) -> None:
        """Separate a batch of chunks with the model: each chunk's heard speakers (everyone when
        nobody is heard) rendered from their embeddings, added to their waveforms."""
        if not pending:
            return
        x = np.zeros((len(pending), size), np.float32)  # the last chunk: zero-padded, cropped back below
        render = np.zeros((len(pending), len(speakers)), bool)
        for i, (c, piece) in enumerate(pending):
            x[i, :len(piece)] = piece
            render[i] = active[c] if active[c].any() else True
        ident = torch.from_numpy(np.repeat(np.asarray(speakers, np.float32)[None], len(pending), 0))
        waves = self.model.separate(torch.from_numpy(x), ident, torch.from_numpy(render)).float().cpu().numpy()
        for i, (c, piece) in enumerate(pending):
            lo = starts[c]
            sources[:, lo:lo + len(piece)] += waves[i, :, :len(piece)]
