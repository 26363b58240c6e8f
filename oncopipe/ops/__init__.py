"""Operating the deployed platform (issue 13): cost per sample (:mod:`oncopipe.ops.cost`),
time to insight (:mod:`oncopipe.ops.insight`), CloudFormation drift (:mod:`oncopipe.ops.drift`).
"""
