"""The commands of ``polymodal`` other than the training ones, grouped by what they work on.

Each module defines standalone click commands that :mod:`polymodal._cli` adds to its group;
nothing here imports the CLI root. Heavy libraries (torch, pydantic, plugins) are imported inside
the command that needs them, so ``polymodal list`` stays light.
"""
