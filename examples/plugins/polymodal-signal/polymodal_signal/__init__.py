"""polymodal-signal: 1-D signal components for polymodal (the ``signal`` adapter, ``tcn`` backbone).

The components live in :mod:`polymodal_signal.adapter` and :mod:`polymodal_signal.tcn`; the
entry point names :mod:`polymodal_signal.plugin`. This module imports nothing, so finding the
package's manifest costs no import of torch.
"""

__version__ = "0.1.0"
