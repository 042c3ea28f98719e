"""Defaults that both the command line and the library use, in a module light enough for
``dreamsearch --help`` to import."""

#: IVF lists searched per query (docs/index-policy.md: recall@25 1.000 on clustered data).
DEFAULT_NPROBE = 16

#: Larger pictures are refused as decompression bombs.
DEFAULT_MAX_PIXELS = 200_000_000
