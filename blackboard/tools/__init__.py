"""Tools around the product: the benchmarks behind ``bb bench``.

May import everything below the CLI, projections/ and replay/ included: a
benchmark measures the whole path.
"""
