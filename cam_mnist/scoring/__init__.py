"""Scoring, arrays in and numbers out: classification, localization, faithfulness, sanity checks, the accumulator."""
