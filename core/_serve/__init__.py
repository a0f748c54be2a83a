"""polymodal serve: a trained model behind an HTTP API (``pip install 'polymodal[serve]'``)."""
