"""Evaluation of synthesised speech in the CV3-Eval style.

- :mod:`~cosyml.evaluation.testset`: read/write test sets in the CV3-Eval layout (and the speaker-SFT set);
- :mod:`~cosyml.evaluation.asr`: batched, language-forced Whisper transcription;
- :mod:`~cosyml.evaluation.metrics`: CV3 text normalisation, CER/WER, aggregates, bootstrap CIs, cosine;
- :mod:`~cosyml.evaluation.speaker`: CAM++ speaker embeddings (SS_campplus);
- :mod:`~cosyml.evaluation.audio_checks`: silence, clipping and duration checks;
- :mod:`~cosyml.evaluation.score`: score a folder of outputs into rows and per-subset summaries.
"""
