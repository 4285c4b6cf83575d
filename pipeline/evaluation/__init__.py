"""Faithfulness evaluation of any explainer (docs/architecture.md, "Evaluation").

- :mod:`~pipeline.evaluation.protocols`: body-restricted visibility and deletion curves, pure functions.
- :mod:`~pipeline.evaluation.stats`: AUC, bootstrap and paired intervals over cases, rank correlation.
- :mod:`~pipeline.evaluation.compare`: every protocol for every explainer on one set of slices.
- :mod:`~pipeline.evaluation.shortcut`: the shortcut benchmark's cue share and pointing game.
- :mod:`~pipeline.evaluation.sanity`: the model-randomisation sanity check.
- :mod:`~pipeline.evaluation.ambiguity`: GED, sample diversity and Hungarian-matched IoU against several raters.
- :mod:`~pipeline.evaluation.criteria`: pass or fail per criterion, in words.
- :mod:`~pipeline.evaluation.run`: ``unoise evaluate`` (``configs/evaluate.json``).
- :mod:`~pipeline.evaluation.report`: figures and the HTML report.
"""
