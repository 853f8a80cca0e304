"""Bundles: the document, statistics, storage, archives, reports, comparisons, plots."""
