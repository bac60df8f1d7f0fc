"""MRC Studio's Gradio app: Edit, Review and Human-evaluation tabs, thin over ``core``.

UI-independent logic lives in :mod:`core.review_queue` (the review queue), :mod:`studio.rating`
(blind pairs), :mod:`studio.results` (statistics), :mod:`studio.model` (the editing model) and
:mod:`studio.auth` (login and roles); the ``*_tab`` modules only wire them to Gradio, and
:mod:`studio.app` assembles the Blocks. ``python app.py`` is the entry point.
"""
