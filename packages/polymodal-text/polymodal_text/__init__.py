"""polymodal-text: free text for polymodal (the ``text`` adapter and ``transformers`` backbone).

The components live in :mod:`polymodal_text.adapter` and :mod:`polymodal_text.backbone`; the
entry point names :mod:`polymodal_text.plugin`. This module imports nothing, so finding the
package's manifest costs no import of torch or transformers.
"""

__version__ = "0.1.0"
