"""Diarization back end: LDA + PLDA, AHC initialisation, VBx clustering, windows -> segments.

Typical use::

    plda = PLDA.fit(train_embeddings, train_speakers, PLDAConfig())
    windows = sliding_windows(duration, WindowConfig())
    clus = vbx_cluster(window_embeddings, plda, VBxConfig(), AHCConfig())   # blind K
    hyp = posteriors_to_annotation(clus.posteriors, windows, uri)
"""
