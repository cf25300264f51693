"""A trained run turned into its reports: accuracy per step, the localization and sanity tables, the benchmarks."""
