"""Tiny model kits in the official CosyVoice layout, for tests and the demo.

Nothing here downloads anything: every file is generated from small random-weight modules with the
official interfaces (names, dtypes, shapes, file formats). Numbers produced with a kit prove plumbing
and learning, never voice quality.
"""
