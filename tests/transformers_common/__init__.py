"""Helpers that run transformers' own common test suites (from its PyPI sdist) against mPLUG."""
