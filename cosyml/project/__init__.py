"""A cosyml project: the one pipeline template (``dvc.yaml``, ``MLproject``, ``.gitignore``), the
commented ``params.yaml`` writer, and ``cosyml init`` (checks + writing a project a user can version).

The repository's own demo is this template rendered with the demo's params plus its ``kit`` stage
(``tests/test_init.py`` checks the committed files are exactly that), so the demo cannot drift from what
users run.
"""
