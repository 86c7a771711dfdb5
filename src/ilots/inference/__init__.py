"""Prediction over whole orthophotos with memory bounded by the window: the window grid and its
blending, the forward pass, the writer of Cloud-Optimized outputs, resume, and the runners for one
process and for many (``--devices``, ``torchrun``)."""
