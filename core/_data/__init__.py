"""Reading the user's tables and files into batches: tables, codecs, datasets and loaders.

Light to import: numpy only; torch and readers of optional formats load when used.
"""
