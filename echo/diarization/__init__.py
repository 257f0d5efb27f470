"""Diarization: the :class:`~echo.diarization.diarizer.Diarizer` (local segmentation, then LDA +
PLDA, AHC initialisation and VBx clustering of local-speaker embeddings).

Typical use::

    diarizer = Diarizer.from_pretrained("models/echo")
    out = diarizer("meeting.wav")
    out.speaker_diarization.write_rttm(sys.stdout)
"""
