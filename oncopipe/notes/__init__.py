"""Clinical notes: parse, scrub PHI, extract oncology concepts, tokenise.

Pure functions on text, no AWS and no storage: :mod:`oncopipe.notes.core` ties them together
(``process_note``), :mod:`.scrub` removes PHI, :mod:`.nlp` runs medspaCy, :mod:`.rules` holds
the lexicons and patterns, :mod:`.tokenizer` trains a WordPiece vocabulary on scrubbed text and
:mod:`.sample` writes synthetic notes with gold annotations (:mod:`.evaluate` scores them).
"""
